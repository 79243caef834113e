"""PySceneDetect's detector input and scoring in a thread of their own, overlapped with the rest of the decode loop.

`CutDetector.feed` converts each frame to BGR at full size, shrinks it (about 0.5 ms per 720p frame) and scores it
(about 0.4 ms) inline, after a 2.5 ms decode. `PipelinedCutDetector` hands that work to one worker thread, frame
after frame in decode order, and collects the results `depth` frames later. swscale, OpenCV and NumPy release the
GIL for this work, so it overlaps decoding and the loop's own per-frame work. The detector is the same object fed
the same frames with the same timecodes in the same order, so its cuts are `CutDetector`'s (PySceneDetect's own,
frame for frame); they are only reported up to `depth` frames later, which `latency` says.

Opt-in (`REALACTION_DETECTOR_THREAD=1`, see `scenes.build_cut_detector`): with the detector converting frames
through PyAV's shared reformatter while the curator converted analysis frames, the two threads deadlocked. The
detector now converts with a reformatter of its own (the curate tests pass with the thread on), but that has not
been checked under load, and the thread saved only 4-5% of curate's wall time on 2 cores (docs/benchmarks.md).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor


class PipelinedCutDetector:
    """A `realaction.cuts.scenes.CutDetector` (`inner`) whose frame input and scoring run in a worker thread, `depth`
    frames behind `feed`; the same interface (feed, finish, cuts, cut_numbers, latency, hold_from)."""

    def __init__(self, inner, depth: int = 4):
        self.inner, self.depth = inner, depth
        self.latency = inner.latency + depth  # a cut is known `depth` frames later than inline
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="detect")
        self._pending: deque[Future] = deque()
        self._hold: int | None = None

    @property
    def cuts(self) -> list[int]:
        return self.inner.cuts

    @property
    def cut_numbers(self) -> list[int]:
        return self.inner.cut_numbers

    @property
    def hold_from(self) -> int | None:
        return self._hold  # as of the last frame collected (later frames are within the added latency)

    def _work(self, tc, frame):
        found = self.inner._score(tc, frame)
        return found, self.inner.hold_from  # read in the worker, in order with the detector's state

    def feed(self, index: int, frame, pts: int) -> list[int]:
        tc = self.inner._advance(index, pts)
        self._pending.append(self._pool.submit(self._work, tc, frame))
        new: list[int] = []
        while len(self._pending) > self.depth:
            new += self._collect(self._pending.popleft())
        return new

    def _collect(self, future: Future) -> list[int]:
        found, self._hold = future.result()  # re-raises the worker's exception here
        return self.inner._add(found)

    def finish(self) -> list[int]:
        new: list[int] = []
        try:
            while self._pending:
                new += self._collect(self._pending.popleft())
        finally:
            self.close()
        return new + self.inner.finish()

    def close(self) -> None:
        """Stop the worker (work already queued still runs); `finish` calls it."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
