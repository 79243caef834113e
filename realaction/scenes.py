"""Scene-cut detection with PySceneDetect's detectors, fed frame by frame from our own single decode pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# --detector name -> (PySceneDetect class, the keyword its threshold goes to)
DETECTORS = {
    "adaptive": ("AdaptiveDetector", "adaptive_threshold"),
    "content": ("ContentDetector", "threshold"),
    "threshold": ("ThresholdDetector", "threshold"),
    "hash": ("HashDetector", "threshold"),
    "histogram": ("HistogramDetector", "threshold"),
}


def make_detector(name: str, threshold: float | None = None):
    import scenedetect

    class_name, threshold_arg = DETECTORS[name]
    kwargs = {} if threshold is None else {threshold_arg: float(threshold)}
    return getattr(scenedetect, class_name)(**kwargs)


class CutDetector:
    """Feed downscaled BGR frames in order; get back the frame numbers where new scenes start.

    A detector reports a cut up to `latency` frames after the cut frame (AdaptiveDetector looks ahead
    `window_width` frames, the flash filter may hold a cut back): after `feed(i, ...)` returns, every cut at
    a frame <= i - latency has been reported.
    """

    def __init__(self, name: str, threshold: float | None, fps: float):
        from scenedetect import FrameTimecode

        self._tc = FrameTimecode
        self.fps = fps
        self.detector = make_detector(name, threshold)
        self.latency = int(self.detector.event_buffer_length) + 1
        self.cuts: list[int] = []
        self._last = -1

    @property
    def hold_from(self) -> int | None:
        """First frame a cut may still be placed at, beyond `latency`: ThresholdDetector puts a fade's cut
        between the fade-out and the fade-in, which it only sees when the picture comes back."""
        fade = getattr(self.detector, "last_fade", None)
        if isinstance(fade, dict) and fade.get("type") == "out" and getattr(self.detector, "processed_frame", False):
            return int(fade["frame"].frame_num)
        return None

    def feed(self, index: int, frame_bgr: np.ndarray) -> list[int]:
        self._last = index
        found = self.detector.process_frame(self._tc(index, self.fps), frame_bgr)
        return self._add(found)

    def finish(self) -> list[int]:
        if self._last < 0:
            return []
        return self._add(self.detector.post_process(self._tc(self._last, self.fps)))

    def _add(self, found) -> list[int]:
        if not found:  # the usual case, once per frame
            return []
        new = sorted({int(tc.frame_num) for tc in found} - set(self.cuts))
        new = [c for c in new if 0 < c <= self._last]
        self.cuts.extend(new)
        return new


def detect_size(width: int, height: int, side: int, multiple: int = 2) -> tuple[int, int]:
    """(w, h) with the longest side at most `side` (never upscaled), both multiples of `multiple`."""
    scale = min(1.0, side / max(width, height))
    m = multiple
    return max(m, int(round(width * scale / m)) * m), max(m, int(round(height * scale / m)) * m)


def detect_cuts(path: Path, detector: str = "adaptive", threshold: float | None = None, side: int = 256) -> list[int]:
    """Cut frames of one video (scene-detection only; the pipeline does this inside its single decode pass)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate)
        cd = CutDetector(detector, threshold, fps)
        size = None
        for i, frame in enumerate(container.decode(stream)):
            size = size or detect_size(frame.width, frame.height, side, multiple=4)
            cd.feed(i, small_bgr(frame, *size))
        cd.finish()
    return sorted(cd.cuts)


_PLANAR_420 = ("yuv420p", "yuvj420p")


def _shrink(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize one image plane: an integer-factor area average (fast in OpenCV) down to under 2x the target,
    then bilinear. Plain INTER_AREA at a fractional factor costs several times more; plain bilinear aliases."""
    import cv2

    h, w = plane.shape[:2]
    k = min(w // width, h // height)
    if k >= 2:
        plane = cv2.resize(plane, (w // k, h // k), interpolation=cv2.INTER_AREA)
    if plane.shape[1] == width and plane.shape[0] == height:
        return plane
    return cv2.resize(plane, (width, height), interpolation=cv2.INTER_LINEAR)


def small_bgr(frame, width: int, height: int) -> np.ndarray:
    """A decoded frame downscaled to (width, height) BGR for detection and analysis.

    For 8-bit 4:2:0 frames the planes are resized with OpenCV before the colour conversion, several times
    cheaper than swscale converting first; other formats go through `frame.reformat`.
    """
    import cv2

    if frame.format.name in _PLANAR_420 and width % 4 == 0 and height % 4 == 0:
        y, u, v = (_plane(p) for p in frame.planes)
        out = np.empty((height * 3 // 2, width), np.uint8)  # I420: Y, then U and V packed two rows per row
        out[:height] = _shrink(y, width, height)
        out[height:height + height // 4] = _shrink(u, width // 2, height // 2).reshape(height // 4, width)
        out[height + height // 4:] = _shrink(v, width // 2, height // 2).reshape(height // 4, width)
        return cv2.cvtColor(out, cv2.COLOR_YUV2BGR_I420)
    return frame.reformat(width=width, height=height, format="bgr24").to_ndarray()


def _plane(plane) -> np.ndarray:
    """One 8-bit plane of a decoded frame as a [height, width] view (rows are `line_size` apart)."""
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: plane.height, : plane.width]
