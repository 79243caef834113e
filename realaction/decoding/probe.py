"""Discover source videos under a folder and probe each one's stream metadata (PyAV)."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
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


@dataclass(frozen=True)
class Skipped:
    """Something under --src that could hold videos but cannot be scanned; listed in sources.jsonl as `skipped`."""

    rel: str
    reason: str


def discover(src: Path, skipped: list[Skipped] | None = None) -> list[Source]:
    """Every file under `src` with a video extension, sorted by path; hidden files and folders are left out.

    Symlinked files and folders are followed, after everything reachable without links (so a folder found
    both directly and through a link is curated once, under its real path). What cannot be scanned is appended
    to `skipped` with the reason: a symlink loop, a dangling symlink, an unreadable folder, a link to a folder
    or file already found by another path (curating it twice would duplicate its clips), a link to a system
    folder (/etc, /proc, /usr, ...) or to a folder that contains --src (/, a home folder): those are not followed.
    """
    src = Path(src)
    found: list[Source] = []
    seen: dict[tuple[int, int], str] = {}  # (device, inode) -> the relative path it was first found at
    notes = skipped if skipped is not None else []
    links: list[tuple[str, str, frozenset]] = []  # followed once the tree without links is done

    def visit(path: str, rel: str, ancestors: frozenset, is_link: bool) -> None:
        if is_link and not following:
            links.append((path, rel, ancestors))
            return
        try:
            st = os.stat(path)  # follows links
        except OSError as e:
            if is_link:
                if e.errno == errno.ELOOP:
                    notes.append(Skipped(rel, "symlink loop"))
                elif e.errno == errno.ENOENT:
                    notes.append(Skipped(rel, f"dangling symlink (to {os.readlink(path)})"))
                else:
                    notes.append(Skipped(rel, f"unreadable symlink: {_first_line(e)}"))
            elif Path(rel).suffix.lower() in VIDEO_EXTENSIONS:
                notes.append(Skipped(rel, f"unreadable: {_first_line(e)}"))
            return
        ident = (st.st_dev, st.st_ino)
        if stat.S_ISDIR(st.st_mode):
            system = _system_folder(os.path.realpath(path), src_real) if is_link else None
            if system is not None:
                notes.append(Skipped(rel, f"symlink to {system}: not followed"))
            elif ident in ancestors:
                notes.append(Skipped(rel, "symlink loop: links to a folder that contains it"))
            elif ident in seen:
                notes.append(Skipped(rel, f"same folder as {seen[ident]}"))
            else:
                seen[ident] = rel
                walk(path, rel + "/", ancestors | {ident})
        elif stat.S_ISREG(st.st_mode) and Path(rel).suffix.lower() in VIDEO_EXTENSIONS:
            if ident in seen:
                notes.append(Skipped(rel, f"same file as {seen[ident]}"))
            else:
                seen[ident] = rel
                found.append(Source(path=Path(path), rel=rel, source_id=source_id(rel)))

    def walk(folder: str, prefix: str, ancestors: frozenset) -> None:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            notes.append(Skipped(prefix.rstrip("/") or ".", f"unreadable folder: {_first_line(e)}"))
            return
        for entry in entries:
            if not entry.name.startswith("."):
                visit(entry.path, prefix + entry.name, ancestors, entry.is_symlink())

    root = os.stat(src)
    src_real = os.path.realpath(src)
    seen[(root.st_dev, root.st_ino)] = "."
    following = False  # links met in the first walk wait in `links`; those inside linked folders are followed at once
    walk(str(src), "", frozenset({(root.st_dev, root.st_ino)}))
    following = True
    for path, rel, ancestors in links:
        visit(path, rel, ancestors, is_link=True)
    found.sort(key=lambda s: s.rel.split("/"))
    notes.sort(key=lambda k: k.rel.split("/"))
    return found


# Folders no video collection lives in; walking them reads the whole system (and /proc, /sys never end).
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev", "/etc", "/boot", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/usr",
                  "/run", "/var/run", "/var/lib", "/var/cache", "/var/log", "/snap")


def _system_folder(real: str, src_real: str) -> str | None:
    """Why a linked folder resolving to `real` must not be walked, or None: a system folder (or one inside one),
    or a folder above --src (the root, the home folder: all of it would be curated)."""
    if real == "/" or src_real.startswith(real.rstrip("/") + "/"):
        return f"a folder above --src ({real})"
    if any(real == f or real.startswith(f + "/") for f in SYSTEM_FOLDERS):
        return f"a system folder ({real})"
    return None


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
