"""Write curated clips to WebDataset shards and commit them so that a killed run loses and duplicates nothing.

Commit protocol (one writer, in the main process):
1. samples go into `shards/realaction-NNNNNN.tar.tmp` through a `ShardWriter` that writes webdataset's tar
   format with the standard library (`tar_writer`; no reader's `*.tar` matches);
2. a shard only ever holds whole sources, unless one source alone overflows it (then its shards hold only it);
3. when a shard is closed it is fsynced and renamed to `realaction-NNNNNN.tar`; then the manifest rows and
   finally the `done` rows of the sources it completes are appended to manifest.jsonl and sources.jsonl.
On restart (`prepare_out`) a source counts as finished only if its `done` row is there: temp files, shards no
`done` row names, and manifest rows of unfinished sources are removed, so their sources run again from scratch.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from realaction.text import finite_or_none
from realaction.worker import SourceResult

SHARD_PATTERN = "realaction-%06d.tar"
TEMP_SUFFIX = ".tmp"
_SHARD_RE = re.compile(r"^realaction-(\d{6,})\.tar$")


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


def write_atomic(path: Path, text: str | bytes) -> None:
    tmp = path.with_name(path.name + TEMP_SUFFIX)
    with open(tmp, "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class OutState:
    done: dict[str, dict]  # source rel path -> its done row
    next_shard: int
    non_finite: int = 0  # bare NaN/Infinity found in the JSON lines (read as null, rewritten as null)


def prepare_out(out: Path) -> OutState:
    """Make OUT consistent after any earlier run, finished or killed; see the module docstring."""
    out = Path(out)
    shards = out / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    non_finite: list[str] = []
    for row in read_jsonl(out / "sources.jsonl", non_finite):
        if row.get("status") == "done" and "source" in row:
            done[row["source"]] = row
    named = {name for row in done.values() for name in row.get("shards", [])}
    for f in sorted(shards.iterdir()):
        if f.name.endswith(TEMP_SUFFIX) or (_SHARD_RE.match(f.name) and f.name not in named):
            f.unlink()
    for f in out.glob("*" + TEMP_SUFFIX):
        f.unlink()
    # Errors are retried; rows of sources that never finished are dropped with their clips.
    write_atomic(out / "sources.jsonl", jsonl_text(done.values()))
    seen, manifest = set(), []
    for row in read_jsonl(out / "manifest.jsonl", non_finite):
        if row.get("source") in done and row.get("key") not in seen:
            seen.add(row.get("key"))
            manifest.append(row)
    write_atomic(out / "manifest.jsonl", jsonl_text(manifest))
    indices = [int(m.group(1)) for name in named if (m := _SHARD_RE.match(name))]
    return OutState(done=done, next_shard=max(indices, default=-1) + 1, non_finite=len(non_finite))


class ShardCommitter:
    """Takes finished sources, writes their kept clips to shards and commits rows as described above."""

    def __init__(self, out: Path, start_shard: int, maxcount: int, maxsize_bytes: float, commit_seconds: float = 300.0):
        from realaction.tar_writer import ShardWriter

        self.out = Path(out)
        self.dir = self.out / "shards"
        self.maxcount, self.maxsize = maxcount, maxsize_bytes
        self.commit_seconds = commit_seconds
        self._pending: list[tuple[SourceResult, list[str]]] = []
        self._opened = time.monotonic()
        self.writer = ShardWriter(str(self.dir / (SHARD_PATTERN + TEMP_SUFFIX)), maxcount=maxcount,
                                  maxsize=maxsize_bytes, post=self._finished, start_shard=start_shard)

    def _final_name(self, temp: str) -> str:
        return Path(temp).name[: -len(TEMP_SUFFIX)]

    def _finished(self, temp: str) -> None:
        """ShardWriter closed `temp`: publish it (or drop it if empty), then commit the sources it completes."""
        temp_path = Path(temp)
        if self.writer.count == 0:
            temp_path.unlink(missing_ok=True)
        else:
            with open(temp_path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(temp_path, self.dir / self._final_name(temp))
            _fsync_dir(self.dir)
        self._opened = time.monotonic()
        pending, self._pending = self._pending, []
        for result, names in pending:
            self._commit(result, names)

    def _commit(self, result: SourceResult, shard_names: list[str]) -> None:
        if result.row.get("status") == "done":
            append_jsonl(self.out / "manifest.jsonl", [c.row for c in result.clips])
        row = dict(result.row)
        if shard_names:
            row["shards"] = sorted(set(shard_names))
        append_jsonl(self.out / "sources.jsonl", [row])

    def add(self, result: SourceResult) -> None:
        samples = [c for c in result.clips if c.sample is not None]
        if not samples:
            self._commit(result, [])
            return
        w = self.writer
        size = sum(len(v) for c in samples for v in c.sample.values() if isinstance(v, bytes))
        if w.count > 0 and (w.count + len(samples) > self.maxcount or w.size + size > self.maxsize):
            w.next_stream()  # keep shards made of whole sources
        names = []
        for c in samples:
            if w.count >= self.maxcount or w.size >= self.maxsize:
                w.next_stream()
            w.write(c.sample)
            c.row["shard"] = self._final_name(w.fname)
            names.append(c.row["shard"])
        self._pending.append((result, names))
        if w.count >= self.maxcount or w.size >= self.maxsize or time.monotonic() - self._opened > self.commit_seconds:
            w.next_stream()

    def close(self) -> None:
        self.writer.close()
        pending, self._pending = self._pending, []
        for result, names in pending:  # only when the writer had nothing open
            self._commit(result, names)
