"""What the CLI does around a command's library call: one run per output folder (an advisory lock), and a full
disk reported in one line."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from realbase.errors import UserError

LOCK_NAME = ".realdpo.lock"
_DISK_FULL_TEXT = ("no space left on device", "storagefull", "disk quota exceeded")
LOW_SPACE = 16 << 20  # a failed write with less than this left where it wrote is taken as a full disk


def _main_process() -> bool:
    """Rank 0 of an `accelerate launch` (or a plain run): the one process of a launch that takes the lock."""
    return os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) in ("", "0")


@contextmanager
def out_lock(folder: Path | None, command: str) -> Iterator[None]:
    """Hold an advisory lock (flock) on `folder`/.realdpo.lock while a command writes into `folder`; a second run
    into the same folder is refused in one line. The kernel drops the lock when the process ends, however it ends,
    so a killed run leaves no stale lock (the file stays; it only names the last holder)."""
    if folder is None or not _main_process():
        yield
        return
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot write in --out {folder}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise UserError(f"cannot lock --out {folder}: {e.strerror or e}") from None
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            who = f" (pid {holder[0]})" if holder and holder[0].isdigit() else ""
            raise UserError(f"--out {folder} is in use by another realdpo run{who}; wait for it to end or give "
                            "another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
        if created:  # a run refused before it wrote anything leaves no folder behind
            _remove_if_only_lock(folder)


def _remove_if_only_lock(folder: Path) -> None:
    try:
        if [p.name for p in folder.iterdir()] == [LOCK_NAME]:
            (folder / LOCK_NAME).unlink()
            folder.rmdir()
    except OSError:
        pass


def disk_full(e: BaseException, folder: Path | None = None) -> bool:
    """Whether `e` (or what it was raised from) is a write that failed for want of space. torch and safetensors
    wrap the OS error in their own exceptions (torch's says only "file write failed"), so their messages are read
    too, and a write error with almost no space left in `folder` counts."""
    if folder is not None and "write failed" in str(e).lower():
        try:
            if shutil.disk_usage(_existing(Path(folder))).free < LOW_SPACE:
                return True
        except OSError:
            pass
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(e).lower() for text in _DISK_FULL_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_full_error(command: str) -> UserError:
    again = "with --resume" if command == "train" else "the same command"
    return UserError(f"out of disk space: free some and run {again} again; it resumes where it stopped")


class _Quiet(logging.Filter):
    """Drops a library's log record containing `text`; with `note`, the first such record is replaced by it."""

    def __init__(self, text: str, note: str | None = None):
        super().__init__()
        self.text, self.note, self.noted = text, note, False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.text not in record.getMessage():
            return True
        if self.note is None or self.noted:
            return False
        self.noted = True
        record.msg, record.args = self.note, ()
        return True


# Logger names as the libraries create them (logging.getLogger(__name__)), so nothing is imported to quiet them.
_CUT_PROMPT_LOGGERS = [f"diffusers.pipelines.cogvideo.pipeline_cogvideox{suffix}"
                       for suffix in ("", "_image2video", "_video2video", "_fun_control")]
_QUIETED = False


def quiet_library_noise() -> None:
    """Keep two libraries' messages off the terminal: bitsandbytes' note that an optional `kernels` package is
    missing (printed at every torch command's start; nothing here uses its 4-bit CPU kernels), and diffusers'
    truncated-prompt warning, which prints the cut-off caption text (any length, any bytes): one line says a
    prompt was cut, once per run."""
    global _QUIETED
    if _QUIETED:
        return
    _QUIETED = True
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_Quiet("kernels-community"))
    cut = _Quiet("was truncated because", "a prompt longer than the text encoder's token limit was cut to that "
                 "limit (as the model's own pipeline does); further cuts are not reported")
    for name in _CUT_PROMPT_LOGGERS:
        logging.getLogger(name).addFilter(cut)
    logging.getLogger("transformers.tokenization_utils_base").addFilter(
        _Quiet("Token indices sequence length is longer than"))


def outputs_line(folder: Path, entries: list[tuple[str, str]]) -> str | None:
    """One line naming what a finished command wrote into `folder`: each (name, what it is) that exists there."""
    if not _main_process():
        return None
    folder = Path(folder)
    present = [f"{name} ({what})" if what else name for name, what in entries if (folder / name.rstrip("/")).exists()]
    return f"outputs in {folder}: {', '.join(present)}" if present else None
