"""Split scenes into candidate clips, online: clips are emitted as soon as no later cut can touch them.

Frames are decode indices; lengths are real time, from the frames' presentation timestamps: a clip [s, e) lasts
`time(e) - time(s)` (the start of the frame after its last one), so `--max-seconds` holds on variable-frame-rate
video too. A scene [s, e) between cuts loses `margin` frames on each side that touches a cut (the start and end
of the video are not cuts). The rest is cut greedily into clips of at most `max_seconds`; a remainder of at least
`min_seconds` is a clip too, a shorter one is a `too_short` candidate. No clip spans a cut.

Unusable frames (corrupt ones, or a gap where a packet failed to decode) split a scene the same way, without a
margin: no clip contains one, and each run of them is a `corrupt` candidate of its own.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Segment:
    start: int  # first source frame (decode index)
    end: int  # exclusive
    scene: int  # index of the scene it comes from
    too_short: bool = False
    corrupt: bool = False

    @property
    def length(self) -> int:
        return self.end - self.start


class Segmenter:
    """`push(index, time, cuts, ...)` once per decoded frame, in order, then `finish(...)`; both return the
    segments that became final. `eps` absorbs timestamp rounding (one tick of the stream's time base)."""

    def __init__(self, min_seconds: float, max_seconds: float, margin: int, latency: int, eps: float = 1e-6):
        if not 0 < min_seconds <= max_seconds:
            raise ValueError("need 0 < min_seconds <= max_seconds")
        self.min_s, self.max_s, self.margin, self.latency, self.eps = min_seconds, max_seconds, margin, latency, eps
        self.scene = 0
        self.win_start = 0  # first frame not yet handed out in the current scene
        self._scene_start = 0
        self._times: list[float] = []  # time of frame i (and, after finish, of the end of the last frame)
        self._excluded: list[tuple[int, int]] = []  # unusable frames [a, b) not yet applied, in order
        self._run: tuple[int, int] | None = None  # the current run of unusable frames, not yet emitted

    @property
    def keep_from(self) -> int:
        """Frames before this index will never be part of a clip again."""
        return self.win_start

    def push(self, index: int, time: float, cuts: Iterable[int] = (), hold_from: int | None = None,
             unusable: bool = False, gap_before: bool = False) -> list[Segment]:
        """Frame `index` was decoded at `time`; `cuts` are the newly reported cuts; `hold_from`: a cut may still
        come at this frame or later, whatever the latency; `unusable`: this frame is corrupt; `gap_before`: a
        packet failed to decode just before it."""
        assert index == len(self._times), "frames must be pushed in order"
        self._times.append(max(time, self._times[-1]) if self._times else time)
        if gap_before:
            self._excluded.append((index, index))
        if unusable:
            self._excluded.append((index, index + 1))
        out: list[Segment] = []
        for c in sorted(cuts):
            out += self._apply_excluded(c - 1, close_by=c - self.margin)
            out += self._cut(c)
        # All cuts at frames <= index - latency are known: a full clip is safe once the margin after it is.
        known = index - self.latency
        if hold_from is not None and index - hold_from <= 4 * self._frames_per_clip():  # past that, memory wins
            known = min(known, hold_from - 1)
        out += self._apply_excluded(known - self.margin)  # a cut within `margin` after one moves the clip end
        while self.win_start <= index:
            j = bisect_right(self._times, self._times[self.win_start] + self.max_s + self.eps, lo=self.win_start)
            if j > index:  # the clip starting at win_start may still grow
                break
            end = max(j - 1, self.win_start + 1)
            if end + self.margin - 1 > known:
                break
            out += self._end_run()
            out.append(self._segment(self.win_start, end))
            self.win_start = end
        return out

    def finish(self, num_frames: int, end_time: float, cuts: Iterable[int] = ()) -> list[Segment]:
        """`end_time`: when the last frame ends (its timestamp plus its duration)."""
        assert num_frames == len(self._times)
        self._times.append(max(end_time, self._times[-1] if self._times else end_time))
        out: list[Segment] = []
        for c in sorted(cuts):
            out += self._apply_excluded(c - 1, close_by=c - self.margin)
            out += self._cut(c)
        out += self._apply_excluded(num_frames)
        return out + self._close(num_frames, end_is_cut=False)

    def _frames_per_clip(self) -> int:
        n = len(self._times)
        if n < 2:
            return 1
        return max(1, int(self.max_s * (n - 1) / max(self._times[-1] - self._times[0], 1e-9)))

    def _apply_excluded(self, upto: int, close_by: int | None = None) -> list[Segment]:
        """Apply the unusable frames at or before `upto`: every cut up to `margin` frames after them is known,
        or a cut is next and `close_by` is where its margin starts."""
        out: list[Segment] = []
        while self._excluded and self._excluded[0][0] <= upto:
            a, b = self._excluded.pop(0)
            out += self._close(a if close_by is None else min(a, close_by), end_is_cut=False)
            if b > a:
                if self._run is not None and self._run[1] == a:
                    self._run = (self._run[0], b)
                else:
                    out += self._end_run()
                    self._run = (a, b)
            self.win_start = max(self.win_start, b)
        if self._run is not None and self._run[1] <= upto:  # the frame after the run is usable
            out += self._end_run()
        return out

    def _end_run(self) -> list[Segment]:
        if self._run is None:
            return []
        run, self._run = self._run, None
        return [Segment(*run, self.scene, corrupt=True)]

    def _cut(self, c: int) -> list[Segment]:
        if c <= self._scene_start:
            return []
        out = self._end_run() + self._close(c, end_is_cut=True)
        self.scene += 1
        self._scene_start = c
        self.win_start = max(self.win_start, c + self.margin)
        return out

    def _close(self, end: int, end_is_cut: bool) -> list[Segment]:
        usable_end = end - (self.margin if end_is_cut else 0)
        out: list[Segment] = []
        if usable_end <= self.win_start:
            return out
        out += self._end_run()  # a clip follows: the run before it is over
        t = self._times
        while t[usable_end] - t[self.win_start] > self.max_s + self.eps:
            j = bisect_right(t, t[self.win_start] + self.max_s + self.eps, lo=self.win_start)
            e = max(j - 1, self.win_start + 1)
            out.append(self._segment(self.win_start, e))
            self.win_start = e
        if usable_end > self.win_start:
            out.append(self._segment(self.win_start, usable_end))
        self.win_start = usable_end
        return out

    def _segment(self, start: int, end: int) -> Segment:
        short = self._times[end] - self._times[start] < self.min_s - self.eps
        return Segment(start, end, self.scene, too_short=bool(short))


def split_scenes(cuts: Iterable[int], num_frames: int, min_seconds: float, max_seconds: float, margin: int,
                 times: list[float] | None = None, end_time: float | None = None,
                 unusable: Iterable[int] = ()) -> list[Segment]:
    """The same segments the online Segmenter emits, computed from the full list of cuts. Without `times`, frame
    i is at i seconds (lengths are then frame counts)."""
    times = list(range(num_frames)) if times is None else list(times)
    end_time = float(num_frames) if end_time is None else end_time
    seg = Segmenter(min_seconds, max_seconds, margin, latency=0)
    bad, at = set(unusable), set(c for c in cuts if 0 < c < num_frames)
    out: list[Segment] = []
    for i in range(num_frames):
        out += seg.push(i, times[i], [i] if i in at else (), unusable=i in bad)
    return out + seg.finish(num_frames, end_time)
