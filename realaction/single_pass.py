"""The single decode pass over one source: decode every frame once, feed the cut detector, cut candidate clips.

Decoded frames stay as `av.VideoFrame`s (YUV, no RGB copy, not resized) in a short buffer that holds only the
clip being built: only a clip that passed the filters is resized to the output size, while it is encoded. The
cut detector sees every frame the way its own pipeline would (see `realaction.cuts.scenes`), the fade trimmer
every frame's mean luma, the filters a frame at analysis size, taken from the full decoded frame (so no score
depends on `--max-side`), when it falls on the `--analysis-fps` grid. Past a memory budget for the held frames
(large sources, slow encodes) new frames are held at the output size instead. Memory stays bounded by a few
clips (`--max-seconds`) whatever the video's length.

Time is the frames' presentation timestamps: clip lengths, `start_s`/`end_s`, the analysis grid.
"""

from __future__ import annotations

import threading
from array import array
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterator

import numpy as np

from realaction.cuts.scenes import build_cut_detector, detect_size, rotate
from realaction.decoding.probe import ProbeError, VideoProbe
from realaction.decoding.segments import Segment, Segmenter
from realaction.filters.motion import MIN_FLOW_SIDE
from realaction.options import CutOptions, DecodeOptions
from realbase.errors import one_line
from realbase.video import DecodeError, Prefetch, StreamClock, decode_packets, frame_luma, resize_frame, small_rgb

DECODE_THREADING = "AUTO"  # FFmpeg frame + slice threads
HELD_FRAMES_BUDGET = 1 << 30  # bytes of full-size decoded frames one worker holds before it shrinks new ones


@dataclass
class Candidate:
    """One candidate clip as the decode pass hands it to the scoring thread."""

    segment: Segment
    times: np.ndarray  # presentation time (s) of each frame start..end, plus the end of the last one
    numbers: np.ndarray  # PySceneDetect's frame number for the same instants
    luma: np.ndarray  # mean luma of each frame
    idx: np.ndarray  # decode indices of the analysis frames
    rgb: np.ndarray  # the analysis frames, upright, [T, h, w, 3]
    frames: list | None  # every decoded frame start..end, or None when the clip cannot be kept
    held_bytes: int = 0  # of those frames, counted against the worker's memory budget


class HeldBytes:
    """Bytes of full-size frames held by the decode pass and by the clips in flight (two threads; a frame held
    by both counts twice, so the budget errs on the safe side)."""

    def __init__(self):
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


def geometry(info: VideoProbe, sar: Fraction, max_side: int, analysis_side: int
             ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(out_size upright, coded_out, analysis size in decoded orientation), all in square pixels: a source with
    non-square pixels (sample aspect ratio `sar`) is resampled to its display width."""
    cw, ch = info.coded_width, info.coded_height
    dw = max(2, int(round(cw * float(sar))))  # display width of a decoded frame
    upright = (ch, dw) if info.rotation in (90, 270) else (dw, ch)
    ow, oh = detect_size(*upright, max_side)
    coded_out = (oh, ow) if info.rotation in (90, 270) else (ow, oh)
    aw, ah = detect_size(dw, ch, analysis_side, multiple=4)
    if min(aw, ah) < MIN_FLOW_SIDE:  # a very elongated frame: the flow needs a short side this long
        aw, ah = max(aw, MIN_FLOW_SIDE), max(ah, MIN_FLOW_SIDE)
    return (ow, oh), coded_out, (aw, ah)


def sample_aspect_ratio(stream) -> Fraction:
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    return Fraction(sar.numerator, sar.denominator) if sar and sar.numerator > 0 and sar.denominator > 0 else Fraction(1)


class DecodePass:
    """`with DecodePass(...) as p:` opens the source; `p.candidates()` decodes it once, yielding each candidate
    clip as soon as the cut detector releases it; `p.row()` then says what the pass saw (cuts, frames, errors)."""

    def __init__(self, path, info: VideoProbe, decode: DecodeOptions, cuts: CutOptions, held: HeldBytes,
                 progress: Callable[[int, int], None]):
        import av

        self.info, self.held, self.progress = info, held, progress
        self.container = av.open(str(path))
        try:
            self.stream = self.container.streams.video[0]
            self.stream.thread_type = DECODE_THREADING
            self.clock = StreamClock.of(self.stream, info.fps)
            self.sar = sample_aspect_ratio(self.stream)
            self.out_size, self.coded_out, self.analysis_size = geometry(info, self.sar, decode.max_side,
                                                                         decode.analysis_side)
            self.out_fps = float(decode.fps) if decode.fps else self.clock.nominal_fps
            self.sample_step = 1.0 / decode.analysis_fps
            self.cuts = build_cut_detector(cuts.detector, cuts.threshold, self.clock, info.rotation)
            self.segmenter = Segmenter(cuts.min_seconds, cuts.max_seconds, cuts.cut_margin, self.cuts.latency,
                                       eps=float(self.clock.time_base) + 1e-9)
        except BaseException:
            self.container.close()
            raise
        self.buffer: deque = deque()  # (index, frame, held bytes) from the first frame a clip may still use
        self.analysis: dict[int, np.ndarray] = {}  # index -> RGB frame at analysis size, upright
        self.pts = array("q")  # every frame's timestamp, made increasing
        self.luma = array("d")
        self.n = self.decode_errors = self.corrupt_frames = 0
        self.warning = self.first_error = None
        self.last_duration = None

    def __enter__(self) -> DecodePass:
        return self

    def __exit__(self, *exc) -> None:
        self.container.close()

    def candidates(self) -> Iterator[Candidate]:
        import av

        clock, info, seg, cuts = self.clock, self.info, self.segmenter, self.cuts
        pts, buffer, analysis = self.pts, self.buffer, self.analysis
        next_sample = -np.inf
        gap = False
        raw_bytes = None
        try:
            with Prefetch(decode_packets(self.container, self.stream)) as decoded:
                while True:
                    try:
                        frame = next(decoded)
                    except StopIteration:
                        break
                    except av.error.FFmpegError as e:  # truncated or damaged container: keep what decoded
                        self.warning = f"decoding stopped at frame {self.n}: {one_line(e, typed=True, first_line=True)}"
                        break
                    if isinstance(frame, DecodeError):
                        self.decode_errors += 1
                        self.first_error = self.first_error or frame.reason
                        gap = self.n > 0
                        continue
                    i = self.n
                    self.n += 1
                    p = frame.pts
                    if p is None or (pts and p <= pts[-1]):  # missing or out of order: one nominal frame on
                        p = pts[-1] + clock.frame_ticks if pts else 0
                    pts.append(p)
                    t = clock.seconds(p)
                    self.last_duration = frame.duration or None
                    corrupt = bool(frame.is_corrupt)
                    self.corrupt_frames += corrupt
                    new_cuts = cuts.feed(i, frame, p)
                    self.luma.append(frame_luma(frame))
                    if t >= next_sample - 1e-4:
                        next_sample = max(next_sample + self.sample_step, t + self.sample_step / 2)
                        analysis[i] = rotate(small_rgb(frame, *self.analysis_size), info.rotation)
                    if raw_bytes is None:
                        raw_bytes = sum(pl.buffer_size for pl in frame.planes)
                    if self.held.value + raw_bytes > HELD_FRAMES_BUDGET:  # hold it at the output size instead
                        buffer.append((i, resize_frame(frame, *self.coded_out), 0))
                    else:
                        buffer.append((i, frame, raw_bytes))
                        self.held.add(raw_bytes)
                    for s in seg.push(i, t, new_cuts, cuts.hold_from, unusable=corrupt, gap_before=gap):
                        yield self._candidate(s)
                    gap = False
                    keep_from = seg.keep_from
                    if buffer[0][0] < keep_from:
                        while buffer and buffer[0][0] < keep_from:
                            self.held.add(-buffer.popleft()[2])
                        for j in [j for j in analysis if j < keep_from]:
                            del analysis[j]
                    if self.n % 32 == 0:
                        self.progress(32, 0)
            if self.n == 0:
                raise ProbeError("no decodable frames")
            end_pts = pts[-1] + (self.last_duration or clock.frame_ticks)
            for s in seg.finish(self.n, clock.seconds(end_pts), cuts.finish()):
                yield self._candidate(s)
        finally:
            self.held.add(-sum(b for _, _, b in buffer))
            buffer.clear()
        self.progress(self.n % 32, 0)

    def _candidate(self, s: Segment) -> Candidate:
        """Segment `s` with what the scoring thread needs of it: times, luma, analysis frames, decoded frames."""
        clock, pts = self.clock, self.pts
        end_pts = pts[s.end] if s.end < len(pts) else pts[-1] + (self.last_duration or clock.frame_ticks)
        t = np.array([clock.seconds(p) for p in pts[s.start:s.end]] + [clock.seconds(end_pts)])
        numbers = np.array([clock.frame_number(p) for p in (*pts[s.start:s.end], end_pts)])
        idx = sorted(i for i in self.analysis if s.start <= i < s.end)
        rgb = np.stack([self.analysis[i] for i in idx]) if idx else np.zeros((0, 2, 2, 3), np.uint8)
        frames, held = None, 0
        if not (s.too_short or s.corrupt):
            chosen = [(f, b) for i, f, b in self.buffer if s.start <= i < s.end]
            frames, held = [f for f, _ in chosen], sum(b for _, b in chosen)
            self.held.add(held)
        return Candidate(s, t, numbers, np.asarray(self.luma[s.start:s.end]), np.asarray(idx, dtype=np.int64),
                         rgb, frames, held)

    def row(self) -> dict:
        """What the pass saw, for the source's sources.jsonl row (after `candidates()` ran out)."""
        info, clock, cuts, n = self.info, self.clock, self.cuts, self.n
        warning = self.warning
        if warning is None and info.frames_listed and info.num_frames > 1.1 * n + 2:
            warning = f"decoded {n} of the {info.num_frames} frames the container lists (truncated?)"
        order = sorted(range(len(cuts.cuts)), key=lambda k: cuts.cuts[k])
        row = dict(cuts=[cuts.cuts[k] for k in order], cuts_pts=[cuts.cut_numbers[k] for k in order],
                   frames_decoded=n, decode_errors=self.decode_errors, corrupt_frames=self.corrupt_frames,
                   start_s=round(clock.seconds(self.pts[0]), 4))
        if self.sar != 1:
            row["sample_aspect_ratio"] = f"{self.sar.numerator}:{self.sar.denominator}"
        if self.decode_errors or self.corrupt_frames:
            row["warning"] = (f"{self.decode_errors} packets failed to decode ({self.first_error or 'none'}) and "
                              f"{self.corrupt_frames} frames are corrupt; no kept clip contains them"
                              + (f"; {warning}" if warning else ""))
        elif warning:
            row["warning"] = warning
        return row
