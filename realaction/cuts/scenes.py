"""Scene-cut detection inside our own single decode pass, with PySceneDetect's detectors or TransNetV2.

PySceneDetect's detectors are fed exactly what PySceneDetect's own pipeline (`open_video` + `SceneManager`) feeds
them, so the cuts are its cuts, frame for frame:
- the frame converted to BGR by FFmpeg's swscale at full size: what OpenCV's `VideoCapture` returns, bit for bit;
- shrunk by `SceneManager`'s auto-downscale factor (longest side / 256) with `cv2.resize(INTER_LINEAR)`;
- turned upright (OpenCV applies the display rotation);
- with a `FrameTimecode` built from the frame's presentation timestamp the way its OpenCV backend builds it
  (microseconds since the stream's first timestamp, at the stream's average frame rate).
A cut comes back as that timecode; we map it to the decode index of the frame it names. Both are recorded: the
decode index (what clips are cut at) and the timecode's frame number (what PySceneDetect reports).
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_left
from fractions import Fraction
from pathlib import Path

import numpy as np

from realbase.video import DecodeError, StreamClock, decode_packets, sampled_bgr, to_bgr

# --detector name -> (PySceneDetect class, the keyword its threshold goes to); "transnetv2" is ours
DETECTORS = {
    "adaptive": ("AdaptiveDetector", "adaptive_threshold"),
    "content": ("ContentDetector", "threshold"),
    "threshold": ("ThresholdDetector", "threshold"),
    "hash": ("HashDetector", "threshold"),
    "histogram": ("HistogramDetector", "threshold"),
}


_MICROSECOND = Fraction(1, 1_000_000)


def make_detector(name: str, threshold: float | None = None):
    import scenedetect

    class_name, threshold_arg = DETECTORS[name]
    kwargs = {} if threshold is None else {threshold_arg: float(threshold)}
    return getattr(scenedetect, class_name)(**kwargs)


def pyscenedetect_size(width: int, height: int) -> tuple[int, int]:
    """The size SceneManager's auto-downscale shrinks a width x height frame to."""
    from scenedetect.scene_manager import compute_downscale_factor

    factor = compute_downscale_factor(max(width, height))
    if factor > 1.0:
        return max(1, round(width / factor)), max(1, round(height / factor))
    return width, height


def rotate(img: np.ndarray, rotation: int) -> np.ndarray:
    """Turn an image `rotation` degrees counter-clockwise (the probe's convention)."""
    return np.ascontiguousarray(np.rot90(img, k=rotation // 90)) if rotation else img


class CutDetector:
    """Feed decoded frames in order; get back the decode indices where new scenes start.

    A detector reports a cut up to `latency` frames after the cut frame (AdaptiveDetector looks ahead
    `window_width` frames, the flash filter may hold a cut back): after `feed(i, ...)` returns, every cut at
    a frame <= i - latency has been reported. `cuts` holds the decode indices, `cut_numbers` PySceneDetect's
    frame numbers for them.
    """

    def __init__(self, name: str, threshold: float | None, clock: StreamClock, rotation: int = 0,
                 own_reformatter: bool = False):
        from scenedetect import FrameTimecode

        self._tc = FrameTimecode
        # a converter of its own, for a detector scored in another thread: two threads converting frames through
        # PyAV's shared reformatter at once deadlocked (the curator converts analysis frames meanwhile)
        self._reformatter = None
        if own_reformatter:
            from av.video.reformatter import VideoReformatter

            self._reformatter = VideoReformatter()
        self.clock = clock
        self.rotation = rotation
        self.detector = make_detector(name, threshold)
        self.latency = int(self.detector.event_buffer_length) + 1
        self.cuts: list[int] = []
        self.cut_numbers: list[int] = []
        self._size: tuple[int, int] | None = None
        self._last_tc = None
        self._last = -1
        # every frame's time (microseconds, PySceneDetect's clock), to map a reported timecode back to its frame
        self._us = array("q")

    @property
    def hold_from(self) -> int | None:
        """First frame a cut may still be placed at, beyond `latency`: ThresholdDetector puts a fade's cut
        between the fade-out and the fade-in, which it only sees when the picture comes back."""
        fade = getattr(self.detector, "last_fade", None)
        if isinstance(fade, dict) and fade.get("type") == "out" and getattr(self.detector, "processed_frame", False):
            return self._index_of(fade["frame"])
        return None

    def timecode(self, index: int, pts: int):
        """PySceneDetect's position for the frame decoded `index`-th, with timestamp `pts` (see the OpenCV
        backend's `position`: a non-positive time falls back to the frame count)."""
        from scenedetect.common import Timecode

        us = self.clock.microseconds(pts)
        fps = self.clock.average_fps
        if us <= 0:
            return self._tc(Timecode(pts=index * fps.denominator, time_base=Fraction(1, fps.numerator)), fps=fps)
        return self._tc(Timecode(pts=us, time_base=_MICROSECOND), fps=fps)

    def frame_input(self, frame) -> np.ndarray:
        """The BGR frame PySceneDetect's SceneManager would hand the detector."""
        import cv2

        if self._size is None:
            self._size = pyscenedetect_size(frame.width, frame.height)
        # the same bytes, converting only the pixels the shrink reads, where the shrink is by an odd whole factor
        bgr = sampled_bgr(frame, *self._size, self._reformatter)
        if bgr is None:
            bgr = to_bgr(frame) if self._reformatter is None else \
                self._reformatter.reformat(frame, format="bgr24", threads=1).to_ndarray()
            if (bgr.shape[1], bgr.shape[0]) != self._size:
                bgr = cv2.resize(bgr, self._size, interpolation=cv2.INTER_LINEAR)
        return rotate(bgr, self.rotation)

    def feed(self, index: int, frame, pts: int) -> list[int]:
        return self._add(self._score(self._advance(index, pts), frame))

    def _advance(self, index: int, pts: int):
        """Record frame `index` at `pts`; its timecode. (Cheap: the caller's thread.)"""
        tc = self.timecode(index, pts)
        self._last, self._last_tc = index, tc
        self._us.append(max(self._us[-1] if self._us else 0, self.clock.microseconds(pts)))
        return tc

    def _score(self, tc, frame):
        """The detector's input and its scoring: the costly part, which may run in another thread (in order)."""
        return self.detector.process_frame(tc, self.frame_input(frame))

    def finish(self) -> list[int]:
        if self._last_tc is None:
            return []
        return self._add(self.detector.post_process(self._last_tc))

    def _index_of(self, tc) -> int:
        """Decode index of the frame a timecode names: the first frame at or after its time."""
        return bisect_left(self._us, round(tc.seconds * 1e6) - 1)

    def _add(self, found) -> list[int]:
        if not found:  # the usual case, once per frame
            return []
        new = []
        for tc in sorted(found, key=lambda t: t.seconds):
            index = self._index_of(tc)
            if 0 < index <= self._last and index not in self.cuts:
                self.cuts.append(index)
                self.cut_numbers.append(int(tc.frame_num))
                new.append(index)
        return new


def build_cut_detector(name: str, threshold: float | None, clock: StreamClock, rotation: int = 0):
    """A CutDetector, or the TransNetV2 one for `--detector transnetv2` (which needs torch)."""
    if name == "transnetv2":
        from realaction.cuts.transnet import TransNetCutDetector

        return TransNetCutDetector(threshold, clock)
    if not os.environ.get("REALACTION_DETECTOR_THREAD"):  # opt-in: see realaction/cuts/pipelined_scenes.py
        return CutDetector(name, threshold, clock, rotation)
    from realaction.cuts.pipelined_scenes import PipelinedCutDetector  # the same cuts, scored beside decoding

    return PipelinedCutDetector(CutDetector(name, threshold, clock, rotation, own_reformatter=True))


def detect_size(width: int, height: int, side: int, multiple: int = 2) -> tuple[int, int]:
    """(w, h) with the longest side at most `side` (never upscaled), both multiples of `multiple`."""
    scale = min(1.0, side / max(width, height))
    m = multiple
    return max(m, int(round(width * scale / m)) * m), max(m, int(round(height * scale / m)) * m)


def detect_cuts(path: Path, detector: str = "adaptive", threshold: float | None = None,
                numbers: bool = False, max_frames: int | None = None) -> list[int]:
    """Cut frames of one video (of its first `max_frames`): decode indices, or with `numbers` PySceneDetect's
    frame numbers (the same on constant-frame-rate video). For transnetv2, the shot starts only (not the
    starts of long transitions the curator also cuts at). Scene detection only; the curator does this inside
    its single decode pass."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        clock = StreamClock.of(stream, float(stream.guessed_rate or 25))
        rotation = 0
        cd = None
        pts_prev = None
        i = 0
        for frame in decode_packets(container, stream):
            if isinstance(frame, DecodeError):
                continue
            if cd is None:
                rotation = int(round((frame.rotation or 0) / 90.0)) * 90 % 360
                cd = build_cut_detector(detector, threshold, clock, rotation)
            pts = frame.pts if frame.pts is not None and (pts_prev is None or frame.pts > pts_prev) else \
                (pts_prev or 0) + clock.frame_ticks
            cd.feed(i, frame, pts)
            pts_prev = pts
            i += 1
            if max_frames is not None and i >= max_frames:
                break
        if cd is None:
            return []
        cd.finish()
    starts = set(getattr(cd, "scene_starts", cd.cuts))
    pairs = sorted((a, b) for a, b in zip(cd.cuts, cd.cut_numbers) if a in starts)
    return [b if numbers else a for a, b in pairs]
