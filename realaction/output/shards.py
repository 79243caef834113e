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

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from realaction.options import OutputOptions
from realaction.output.samples import SourceResult
from realbase.files import TEMP_SUFFIX, append_jsonl, fsync_dir, jsonl_text, read_jsonl, write_atomic

SHARD_PATTERN = "realaction-%06d.tar"
_SHARD_RE = re.compile(r"^realaction-(\d{6,})\.tar$")


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

    def __init__(self, out: Path, start_shard: int, options: OutputOptions):
        from realaction.output.tar_writer import ShardWriter

        self.out = Path(out)
        self.dir = self.out / "shards"
        self.maxcount, self.maxsize = options.shard_max_count, options.shard_max_mb * 1024 * 1024
        self.commit_seconds = options.commit_seconds
        self._pending: list[tuple[SourceResult, list[str]]] = []
        self._opened = time.monotonic()
        self.writer = ShardWriter(str(self.dir / (SHARD_PATTERN + TEMP_SUFFIX)), maxcount=self.maxcount,
                                  maxsize=self.maxsize, post=self._finished, start_shard=start_shard)

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
            fsync_dir(self.dir)
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
