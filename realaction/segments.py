"""Split scenes into candidate clips, online: clips are emitted as soon as no later cut can touch them.

A scene [s, e) between cuts loses `margin` frames on each side that touches a cut (the start and end of the
video are not cuts). The rest is cut greedily into clips of `max_len` frames; a remainder of at least
`min_len` frames is a clip too, a shorter one is a `too_short` candidate. No clip spans a cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Segment:
    start: int  # first source frame
    end: int  # exclusive
    scene: int  # index of the scene it comes from
    too_short: bool = False

    @property
    def length(self) -> int:
        return self.end - self.start


class Segmenter:
    def __init__(self, min_len: int, max_len: int, margin: int, latency: int):
        if not 1 <= min_len <= max_len:
            raise ValueError("need 1 <= min_len <= max_len")
        self.min_len, self.max_len, self.margin, self.latency = min_len, max_len, margin, latency
        self.scene = 0
        self.win_start = 0  # first frame not yet handed out in the current scene
        self._scene_start = 0
        self._done = False

    @property
    def keep_from(self) -> int:
        """Frames before this index will never be part of a clip again."""
        return self.win_start

    def push(self, index: int, cuts: Iterable[int] = (), hold_from: int | None = None) -> list[Segment]:
        """Frame `index` was decoded and `cuts` are the cuts reported so far that are new; `hold_from`: a cut may
        still come at this frame or later, whatever the latency."""
        out: list[Segment] = []
        for c in sorted(cuts):
            out += self._cut(c)
        # All cuts at frames <= index - latency are known: a full clip is safe once the margin after it is.
        known = index - self.latency
        if hold_from is not None and index - hold_from <= 4 * self.max_len:  # past that, memory wins
            known = min(known, hold_from - 1)
        while known >= self.win_start + self.max_len + self.margin - 1:
            out.append(Segment(self.win_start, self.win_start + self.max_len, self.scene))
            self.win_start += self.max_len
        return out

    def finish(self, num_frames: int, cuts: Iterable[int] = ()) -> list[Segment]:
        out: list[Segment] = []
        for c in sorted(cuts):
            out += self._cut(c)
        out += self._close(num_frames, end_is_cut=False)
        self._done = True
        return out

    def _cut(self, c: int) -> list[Segment]:
        if c <= self._scene_start:
            return []
        out = self._close(c, end_is_cut=True)
        self.scene += 1
        self._scene_start = c
        self.win_start = max(self.win_start, c + self.margin)
        return out

    def _close(self, end: int, end_is_cut: bool) -> list[Segment]:
        usable_end = end - (self.margin if end_is_cut else 0)
        out = []
        while usable_end - self.win_start >= self.max_len:
            out.append(Segment(self.win_start, self.win_start + self.max_len, self.scene))
            self.win_start += self.max_len
        rest = usable_end - self.win_start
        if rest >= self.min_len:
            out.append(Segment(self.win_start, usable_end, self.scene))
        elif rest > 0:
            out.append(Segment(self.win_start, usable_end, self.scene, too_short=True))
        self.win_start = max(self.win_start, usable_end)
        return out


def split_scenes(cuts: Iterable[int], num_frames: int, min_len: int, max_len: int, margin: int) -> list[Segment]:
    """The same clips the online Segmenter emits, computed from the full list of cuts."""
    seg = Segmenter(min_len, max_len, margin, latency=0)
    return seg.finish(num_frames, [c for c in cuts if 0 < c < num_frames])


def clip_lengths(fps: float, min_seconds: float, max_seconds: float) -> tuple[int, int]:
    """(min_len, max_len) in source frames."""
    max_len = max(1, int(max_seconds * fps + 1e-6))
    min_len = min(max_len, max(1, int(-(-min_seconds * fps // 1))))
    return min_len, max_len
