"""One progress bar for work shared by several processes, and the summary of what they did.

Each process counts its own work (`count`) and, when there are several, writes the counts to a small json file
(atomically, at most a few times a second); the main process sums every process's file into its rich bar (a
background thread refreshes it twice a second), so the bar and its clips/s and videos/s are the whole launch's.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from realbase.files import write_atomic
from realdpo.runtime import Processes


@dataclass
class Summary:
    """What a run did: videos generated and reused per recipe tag, clips skipped or failed with the reason."""

    generated: Counter = field(default_factory=Counter)
    reused: Counter = field(default_factory=Counter)
    skipped: dict[str, str] = field(default_factory=dict)  # key -> reason (undecodable, too short: not retried)
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason (an error while encoding or generating)

    @property
    def n_generated(self) -> int:
        return sum(self.generated.values())

    @property
    def n_reused(self) -> int:
        return sum(self.reused.values())

    def merge(self, other: "Summary") -> "Summary":
        self.generated.update(other.generated)
        self.reused.update(other.reused)
        self.skipped.update(other.skipped)
        for key, reason in other.failed.items():
            self.failed.setdefault(key, reason)
        return self

    def to_dict(self) -> dict:
        return {"generated": dict(self.generated), "reused": dict(self.reused), "skipped": dict(self.skipped),
                "failed": dict(self.failed)}


def _sweep(folder: Path, older_than_s: float = 86400.0) -> None:
    """Remove the count files of launches that were killed (untouched for a day: none is still running)."""
    now = time.time()
    for old in folder.iterdir() if folder.is_dir() else []:
        try:
            if now - old.stat().st_mtime > older_than_s:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def merged(parts: list[Summary]) -> Summary:
    out = Summary()
    for p in parts:
        out.merge(p)
    return out


class SharedProgress:
    """A rich bar on the main process over counters every process adds to.

    Counters: "clips" (clips encoded or found cached), "videos" (negatives or samples made), "reused", "failed".
    `phase(name, total)` starts a new bar (all processes call it at the same point; `total` matters on the main
    process only)."""

    FIELDS = ("clips", "videos", "reused", "failed")

    def __init__(self, processes: Processes, folder: Path, enabled: bool = True, unit: str = "videos"):
        self.p, self.enabled, self.unit = processes, enabled, unit
        token = processes.broadcast(uuid.uuid4().hex[:12]) if processes.world > 1 else None
        self.folder = Path(folder) / ".progress" / token if token else None
        if self.folder is not None and processes.main:
            _sweep(self.folder.parent)
        self.counts = dict.fromkeys(self.FIELDS, 0)
        self._last_write = 0.0
        self._bar = self._task = self._thread = None
        self._stop = threading.Event()
        self._started = 0.0
        self._base = dict(self.counts)
        self._counter, self._per_clip = "clips", 0

    # -- every process -------------------------------------------------------------------------------------------------
    def count(self, **deltas: int) -> None:
        for k, v in deltas.items():
            self.counts[k] += v
        if self.folder is not None and time.monotonic() - self._last_write > 0.3:
            self._write()

    def flush(self) -> None:
        """Write this process's counts now (before a barrier, so the main process sees them all)."""
        if self.folder is not None:
            self._write()

    def _write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"rank-{self.p.rank}.json"
        write_atomic(path, json.dumps(self.counts))
        self._last_write = time.monotonic()

    def _totals(self) -> dict[str, int]:
        if self.folder is None:
            return dict(self.counts)
        total = dict.fromkeys(self.FIELDS, 0)
        for r in range(self.p.world):
            if r == self.p.rank:
                counts = self.counts
            else:
                try:
                    counts = json.loads((self.folder / f"rank-{r}.json").read_text())
                except (OSError, ValueError):
                    continue
            for k in self.FIELDS:
                total[k] += int(counts.get(k, 0))
        return total

    # -- the bar (main process) ----------------------------------------------------------------------------------------
    def __enter__(self) -> "SharedProgress":
        if self.p.main and self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[info]}"), transient=False)
            self._bar.start()
            self._thread = threading.Thread(target=self._refresh_loop, daemon=True)
            self._thread.start()
        return self

    def phase(self, description: str, total: int | None, counter: str, videos_per_clip: int = 0) -> None:
        """A new bar counting `counter` ("clips" or "videos") towards `total`; with `videos_per_clip`, a clip
        counts as done every that many videos (a clip's K negatives)."""
        self.flush()
        if self._bar is None:
            return
        self.refresh()
        self._base, self._counter, self._started = self._totals(), counter, time.monotonic()
        self._per_clip = videos_per_clip
        self._task = self._bar.add_task(description, total=total, info="")

    def refresh(self) -> None:
        if self._bar is None or self._task is None:
            return
        now = self._totals()
        done = {k: now[k] - self._base[k] for k in self.FIELDS}
        dt = max(time.monotonic() - self._started, 1e-6)
        clips = done["videos"] / self._per_clip if self._per_clip else done["clips"]
        info = f"{clips / dt:.2f} clips/s  {done['videos'] / dt:.2f} {self.unit}/s"
        if done["reused"]:
            info += f"  {done['reused']} reused"
        if done["failed"]:
            info += f"  [red]{done['failed']} failed[/]"
        self._bar.update(self._task, completed=done[self._counter] + (done["reused"] if self._counter == "videos" else 0),
                         info=info)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(0.5):
            self.refresh()

    def __exit__(self, *exc) -> None:
        # no write here: the caller flushed before its last barrier, and the main process may be removing the files
        if self._bar is not None:
            self._stop.set()
            self._thread.join()
            self.refresh()
            self._bar.stop()

    def close(self) -> None:
        """After every process has finished (a barrier): remove the count files."""
        if self.folder is not None and self.p.main:
            shutil.rmtree(self.folder, ignore_errors=True)
            try:
                self.folder.parent.rmdir()
            except OSError:
                pass
