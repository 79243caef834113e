"""A pool of spawned worker processes that knows which item each worker holds, survives a worker's death and
dies with its parent.

Why not `concurrent.futures.ProcessPoolExecutor`: when one of its workers is killed (the OOM killer, a crash in a
native decoder) the whole executor breaks, every item in flight fails with `BrokenProcessPool`, and nothing says
which item the dead worker held; and its workers, blocked writing to a full result queue, outlive a parent killed
with SIGKILL. Here each worker has its own pipe and takes one item at a time, so:
- a worker that dies is known, with the item it held: that item's outcome is `WorkerDied`, a new worker takes
  its place, and the other workers carry on;
- a worker whose parent dies exits at once (`die_with_parent`), whatever it is doing.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, Iterator

from realbase.errors import one_line

PR_SET_PDEATHSIG = 1
STARTUP_DEATHS = 3  # workers dying before they take any item, in a row, before the pool gives up


class WorkerDied(Exception):
    """The worker process holding an item exited (killed, crashed) before returning its result."""


class WorkerFailed(Exception):
    """The work function raised, or its result could not be sent back."""


@dataclass
class Outcome:
    item: Any
    result: Any = None
    error: Exception | None = None  # WorkerDied or WorkerFailed


def die_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> None:
    """Make this process exit when `parent_pid` dies, even by SIGKILL.

    Linux: the kernel's parent-death signal (prctl PR_SET_PDEATHSIG, SIGKILL). Everywhere, and as a backstop
    (the kernel signal follows the parent *thread* that started us): a daemon thread that exits when our parent
    pid changes, i.e. when we have been re-parented.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _worker_main(conn, parent_pid: int, init: Callable, init_args: tuple, work: Callable) -> None:
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    lock = threading.Lock()  # the work may emit events from several threads

    def send(message) -> None:
        with lock:
            conn.send(message)

    try:
        state = init(*init_args, lambda *event: send(("event", event)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which stops the run
        send(("init-error", f"{type(e).__name__}: {e}"))
        return
    send(("ready",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, item = message
        try:
            result = work(state, item)
            send(("result", index, result))
        except Exception as e:  # noqa: BLE001 - one item's failure is that item's outcome
            send(("failed", index, one_line(e, typed=True, first_line=True)))


class _Worker:
    def __init__(self, ctx, init, init_args, work):
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child, os.getpid(), init, init_args, work), daemon=True,
                                   name="curate-worker")
        self.process.start()
        child.close()
        self.ready = False  # its init has finished: it takes items from now on
        self.holding: tuple[int, Any] | None = None


class ProcessPool:
    """`n` spawned processes; each runs `state = init(*init_args, emit)` once, then `work(state, item)` per item.

    `emit(*event)` in a worker calls `on_event(*event)` in the parent (progress). `init`, `work` and the items
    must be picklable (module-level functions). Iterate `run(items)` for an `Outcome` per item, in completion order.
    """

    def __init__(self, n: int, init: Callable, init_args: tuple, work: Callable,
                 on_event: Callable[..., None] | None = None):
        self.n = max(1, int(n))
        self.init, self.init_args, self.work = init, init_args, work
        self.on_event = on_event or (lambda *event: None)
        self.ctx = mp.get_context("spawn")  # torch and OpenCV threads do not survive fork
        self.workers: list[_Worker] = []

    def _start(self) -> _Worker:
        w = _Worker(self.ctx, self.init, self.init_args, self.work)
        self.workers.append(w)
        return w

    def run(self, items: Iterable) -> Iterator[Outcome]:
        todo = deque(enumerate(items))
        if not todo:
            return
        startup_deaths = 0
        try:
            for _ in range(min(self.n, len(todo))):
                self._start()
            while todo or any(w.holding for w in self.workers):
                for w in self.workers:
                    if w.ready and w.holding is None and todo:
                        w.holding = todo.popleft()
                        w.conn.send(w.holding)
                ready = wait([w.conn for w in self.workers] + [w.process.sentinel for w in self.workers], timeout=1.0)
                for w in list(self.workers):
                    if w.conn in ready:
                        yield from self._drain(w)
                    if w.process.sentinel in ready or not w.process.is_alive():
                        yield from self._drain(w)  # what it sent before it died still counts
                        self.workers.remove(w)
                        w.process.join()
                        if w.holding is not None:
                            _, item = w.holding
                            yield Outcome(item, error=WorkerDied(_exit_reason(w.process.exitcode)))
                        startup_deaths = 0 if w.ready else startup_deaths + 1
                        if startup_deaths >= STARTUP_DEATHS:
                            raise RuntimeError(f"curation worker processes keep dying at start-up "
                                               f"({_exit_reason(w.process.exitcode)})")
                while todo and len(self.workers) < min(self.n, len(todo) + sum(bool(w.holding) for w in self.workers)):
                    self._start()  # replaces the dead
        finally:
            self.close()

    def _drain(self, w: _Worker) -> Iterator[Outcome]:
        while True:
            try:
                if not w.conn.poll():
                    return
                message = w.conn.recv()
            except (EOFError, OSError, ValueError):  # a dead worker's pipe, or a message cut short by its death
                return
            kind = message[0]
            if kind == "event":
                self.on_event(*message[1])
            elif kind == "ready":
                w.ready = True
            elif kind == "init-error":
                raise RuntimeError(f"a curation worker could not start: {message[1]}")
            elif w.holding is not None and message[1] == w.holding[0]:
                _, item = w.holding
                w.holding = None
                yield Outcome(item, result=message[2]) if kind == "result" else Outcome(item, error=WorkerFailed(message[2]))

    def close(self) -> None:
        """Stop every worker: politely when idle, at once when busy (its item is redone by the next run)."""
        for w in self.workers:
            try:
                if w.holding is None:
                    w.conn.send(None)
                else:
                    w.process.kill()
            except OSError:
                pass
        deadline = time.monotonic() + 5.0
        for w in self.workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.conn.close()
        self.workers = []


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
