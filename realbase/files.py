"""Files that are whole or absent: atomic writes of a file or a folder, and JSON lines that stay valid JSON.

A write goes to a hidden temporary name in the target's own folder (`.NAME.XXXXXX.tmp`, so readers never match it
and a sweep can find it) and is moved into place with one rename: a run killed at any moment leaves either the old
content or the new, never a torn file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from realbase.errors import UserError
from realbase.text import finite_or_none

TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without an error it replaces `path`, otherwise
    it is deleted. For writers that take a path (safetensors, torch.save)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to `path` atomically, synced to disk before the rename."""
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_dir(final: Path, *, if_absent: bool = False) -> Iterator[Path]:
    """Yield a new hidden temporary folder beside `final`; when the block ends without an error it takes the place
    of `final` (`replace_dir`), otherwise it is deleted. `if_absent`: a `final` that appeared meanwhile (another
    process built the same thing) is kept and ours dropped, so a reader of it is never disturbed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield tmp
        if if_absent:
            try:
                os.rename(tmp, final)
            except OSError:  # another process won the race: `final` exists and is not empty
                if not final.exists():
                    raise
        else:
            replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the finished folder `tmp` in place of `final`, which may exist."""
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(final)


def fsync_dir(path: Path) -> None:
    """Sync a folder's entries (a rename in it) to disk; a file system that cannot is left as it is."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable_folder(path: Path, option: str) -> None:
    """Fail in one line unless `path` is a folder we can write in, or one we can create (nothing is created)."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "an existing file" if existing == path else f"inside {existing}, which is a file"
        raise UserError(f"{option} must be a folder, but {path} is {what}")
    try:  # a real write: permissions, read-only mounts and pseudo file systems all answer here
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UserError(f"{option} {path} is not writable: cannot create files in {existing} ({e.strerror or e})") from None


# -- JSON lines --------------------------------------------------------------------------------------------------------
def append_jsonl(path: Path, rows: list[dict]) -> None:
    """Append rows with one write and an fsync, so a kill leaves at most one torn last line."""
    if not rows:
        return
    data = jsonl_text(rows).encode("utf-8")
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def jsonl_text(rows) -> str:
    """JSON lines that are JSON: a non-finite float (which json would write as bare NaN) is written as null."""
    return "".join(_json_line(r) + "\n" for r in rows)


def _json_line(row) -> str:
    try:
        return json.dumps(row, ensure_ascii=False, sort_keys=True, allow_nan=False)
    except ValueError:
        return json.dumps(finite_or_none(row), ensure_ascii=False, sort_keys=True, allow_nan=False)


def read_jsonl(path: Path, non_finite: list | None = None) -> list[dict]:
    """Rows of a JSON-lines file; a torn or damaged line (from a kill) is skipped."""
    return list(iter_jsonl(path, non_finite))


def iter_jsonl(path: Path, non_finite: list | None = None) -> Iterator[dict]:
    """The rows of `read_jsonl`, one at a time (a manifest can be big). Bare NaN/Infinity (written by versions
    before JSON lines were kept valid) are read as None, and each one is appended to `non_finite` if given."""
    if not Path(path).is_file():
        return

    def constant(name: str) -> None:
        if non_finite is not None:
            non_finite.append(name)
        return None

    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line, parse_constant=constant)
            except (json.JSONDecodeError, RecursionError):
                continue
            if isinstance(row, dict):
                yield row
