"""Discover source videos under a folder and probe each one's stream metadata (PyAV)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path

VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".m2v", ".ts", ".mts", ".m2ts",
    ".wmv", ".flv", ".3gp", ".3g2", ".ogv", ".vob", ".mxf", ".dv", ".y4m",
})


class ProbeError(Exception):
    """A source that cannot be read as a video; str(e) is the one-line reason recorded in sources.jsonl."""


@dataclass(frozen=True)
class Source:
    path: Path
    rel: str  # posix path relative to --src: the `source` field everywhere
    source_id: str


@dataclass
class VideoProbe:
    num_frames: int  # from the container; an estimate (duration * fps) when it does not say
    frames_listed: bool  # whether the container states num_frames (mp4 does, mkv and webm do not)
    fps: float
    width: int  # as displayed, i.e. after rotation
    height: int
    coded_width: int
    coded_height: int
    rotation: int  # degrees counter-clockwise to turn decoded frames upright (0, 90, 180, 270)
    duration: float
    codec: str
    pix_fmt: str
    size_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def source_id(rel: str) -> str:
    """Stable id from the relative path: readable slug plus a short hash, no dots (WebDataset splits keys on dots)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", rel).strip("_")[:80] or "video"
    return f"{slug}-{hashlib.sha1(rel.encode('utf-8')).hexdigest()[:8]}"


def discover(src: Path) -> list[Source]:
    """Every file under `src` (recursive, hidden folders skipped) with a video extension, sorted by path."""
    src = Path(src)
    found = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file():
            r = rel.as_posix()
            found.append(Source(path=path, rel=r, source_id=source_id(r)))
    return found


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _first_line(e: BaseException) -> str:
    """The error's first line without its errno prefix and the file name (sources.jsonl already names it)."""
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    line = re.sub(r"^\[Errno -?\d+\]\s*", "", line)
    line = re.sub(r":\s*'[^']*'$", "", line)
    return line[:300]


def probe(path: Path) -> VideoProbe:
    """Stream metadata of `path`, checked by decoding its first frame. Raises ProbeError with the reason."""
    import av

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ProbeError(f"unreadable: {_first_line(e)}") from None
    if size == 0:
        raise ProbeError("empty file")
    try:
        container = av.open(str(path))
    except Exception as e:  # av.error.* for non-media, PermissionError, ...
        raise ProbeError(f"not a readable video: {_first_line(e)}") from None
    with container:
        if not container.streams.video:
            raise ProbeError("no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if not fps > 0 or fps > 1000:
            raise ProbeError(f"no usable frame rate ({rate})")
        duration = 0.0
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
        num_frames = int(stream.frames or 0) or int(round(duration * fps))
        try:
            first = next(container.decode(stream), None)
        except Exception as e:
            raise ProbeError(f"cannot decode: {_first_line(e)}") from None
        if first is None:
            raise ProbeError("no decodable frames")
        rotation = int(round((first.rotation or 0) / 90.0)) * 90 % 360
        w, h = first.width, first.height
        if w < 2 or h < 2:
            raise ProbeError(f"frame size {w}x{h} is too small to use")
        dw, dh = (h, w) if rotation in (90, 270) else (w, h)
        return VideoProbe(
            num_frames=max(num_frames, 1), frames_listed=bool(stream.frames), fps=fps, width=dw, height=dh, coded_width=w, coded_height=h,
            rotation=rotation, duration=duration or num_frames / fps, codec=stream.codec_context.name,
            pix_fmt=str(first.format.name), size_bytes=size,
        )
