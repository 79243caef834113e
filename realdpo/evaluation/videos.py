"""Finding the videos of each method, matching them to prompts, and decoding them once at reduced size."""

from __future__ import annotations

import glob
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from realbase.errors import UserError
from realbase.video import decode_frames, video_info

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif")


def numeric_key(path: Path) -> tuple:
    """Sort key that orders `2.mp4` before `10.mp4` (natural order on the file stem)."""
    parts = re.split(r"(\d+)", path.stem)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p != ""), path.name


def list_videos(folder: Path) -> list[Path]:
    files = [p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    return sorted(files, key=numeric_key)


def parse_methods(specs: list[str]) -> dict[str, Path]:
    methods: dict[str, Path] = {}
    for spec in specs:
        name, _, folder = spec.partition("=")
        if name in methods:
            raise UserError(f"--videos: method name {name!r} given twice")
        methods[name] = Path(folder)
    return methods


def read_prompts(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


def video_number(path: Path) -> int | None:
    """The number a video's name gives it (`12.mp4` -> 12, as `realdpo sample --prompts` names them); None otherwise."""
    return int(path.stem) if path.stem.isdigit() else None


def match_prompts(videos: list[Path], prompts: list[str] | None, method: str) -> list[str | None]:
    """Prompt of each video: with a prompts file, line N (0 the first) for the video named N.mp4, else a sibling
    `<stem>.txt`. A video the prompts file cannot name is refused (UserError)."""
    if prompts is not None:
        out = []
        for v in videos:
            n = video_number(v)
            if n is None:
                raise UserError(f"--prompts: cannot match {method}/{v.name} to a line: only videos named by their line "
                                "number (0.mp4 is the first line, as `realdpo sample --prompts` writes them) can be")
            if n >= len(prompts):
                raise UserError(f"--prompts has {len(prompts)} lines: no line for {method}/{v.name} (N.mp4 takes "
                                "line N, 0.mp4 the first)")
            out.append(prompts[n])
        return out
    out: list[str | None] = []
    for v in videos:
        txt = v.with_suffix(".txt")
        out.append(txt.read_text(encoding="utf-8").strip() if txt.is_file() else None)
    return out


def read_samples(folder: Path) -> dict[str, dict]:
    """`realdpo sample --prompts`'s samples.jsonl in a folder: video file name -> its row (prompt, line, seed); {} when
    absent or unreadable."""
    import json

    path = Path(folder) / "samples.jsonl"
    rows: dict[str, dict] = {}
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if isinstance(row, dict) and isinstance(row.get("video"), str):
                rows[row["video"]] = row
    except (OSError, ValueError, RecursionError):
        return {}
    return rows


def working_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side at `short_side` (never upscaled), both even."""
    scale = min(1.0, short_side / min(width, height))
    w = max(2, int(round(width * scale / 2)) * 2)
    h = max(2, int(round(height * scale / 2)) * 2)
    return w, h


def decode_small(src: Path | bytes, short_side: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """All frames of a video decoded once, resized by the decoder to the working size: (frames, fps, (w, h) native)."""
    n, fps, w, h = video_info(src)
    if n == 0:
        raise ValueError("no frames")
    size = working_size(w, h, short_side)
    frames = decode_frames(src, size=size if size != (w, h) else None)
    return frames, fps, (w, h)


def center_square(frames: np.ndarray, side: int = 224) -> np.ndarray:
    """Shorter side resized to `side` (area filter), then the centre crop: uint8 [T, side, side, 3]."""
    t, h, w = frames.shape[:3]
    scale = side / min(h, w)
    nw, nh = max(side, int(round(w * scale))), max(side, int(round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = np.empty((t, side, side, 3), np.uint8)
    y0, x0 = (nh - side) // 2, (nw - side) // 2
    for i, f in enumerate(frames):
        out[i] = cv2.resize(f, (nw, nh), interpolation=interp)[y0:y0 + side, x0:x0 + side]
    return out


@dataclass
class RealClip:
    name: str
    data: bytes | Path


def expand_real(specs: list[str]) -> list[RealClip]:
    """Real clips for FVD: curated shards (`.tar`, paths or globs, their `mp4` members), video files or folders."""
    clips: list[RealClip] = []
    for spec in specs:
        paths = sorted(Path(p) for p in glob.glob(spec)) if any(c in spec for c in "*?[") else [Path(spec)]
        if not paths or not all(p.exists() for p in paths):
            raise UserError(f"--real: nothing found at {spec}")
        for p in paths:
            if p.is_dir():
                clips += [RealClip(f"{p.name}/{v.name}", v) for v in list_videos(p)]
            elif p.suffix == ".tar":
                clips += _shard_clips(p)
            elif p.suffix.lower() in VIDEO_SUFFIXES:
                clips.append(RealClip(p.name, p))
            else:
                raise UserError(f"--real: not a shard, video or folder: {p}")
    return clips


def _shard_clips(path: Path) -> list[RealClip]:
    try:
        with tarfile.open(path) as tar:
            out = []
            for m in tar:
                if m.isfile() and m.name.endswith(".mp4"):
                    out.append(RealClip(f"{path.name}:{m.name}", tar.extractfile(m).read()))
            return out
    except tarfile.TarError as e:
        raise UserError(f"--real: cannot read shard {path}: {e}") from None

