"""Decode and encode videos: decord for reading (files or bytes), PyAV for the curator's single pass and for
writing (libx264), and the frame-level helpers both share: timestamps, fast resizing, colour range."""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

VideoSource = str | Path | bytes


@functools.lru_cache(maxsize=1)
def _quiet_decord() -> None:
    """decord's FFmpeg logs every damaged macroblock to stderr (thousands of lines for a shard of bad members)."""
    import decord.logging

    decord.logging.set_level(decord.logging.QUIET)


def _check_openable(src: VideoSource) -> None:
    """Raise ValueError (one line, escaped) unless PyAV opens `src` as a video. decord prints a source it cannot
    open to stderr verbatim (the raw bytes of a shard member, or the file name): a crafted file could clear the
    screen or set the terminal's title. PyAV's logging is off, so nothing from the file reaches the terminal."""
    import av

    from realbase.errors import one_line
    from realbase.text import printable

    try:
        with av.open(io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray)) else str(src)) as container:
            if not container.streams.video:
                raise ValueError("not a readable video: no video stream")
    except (av.error.FFmpegError, OSError) as e:
        reason = getattr(e, "strerror", None) or one_line(e, 200, first_line=True)
        raise ValueError(f"not a readable video: {printable(reason, 200)}") from None


def _reader(src: VideoSource, width: int = -1, height: int = -1):
    import decord

    _quiet_decord()
    _check_openable(src)
    if isinstance(src, (bytes, bytearray)):
        return decord.VideoReader(io.BytesIO(src), ctx=decord.cpu(0), width=width, height=height, num_threads=1)
    return decord.VideoReader(str(src), ctx=decord.cpu(0), width=width, height=height, num_threads=1)


def video_info(src: VideoSource) -> tuple[int, float, int, int]:
    """(num_frames, fps, width, height) as decord reads them."""
    vr = _reader(src)
    h, w = vr[0].shape[:2]
    return len(vr), float(vr.get_avg_fps()), w, h


def decode_frames(src: VideoSource, indices: Sequence[int] | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Frames as uint8 RGB [T, H, W, 3]; `indices` picks frames (all by default), `size` = (width, height) resizes."""
    w, h = size if size else (-1, -1)
    vr = _reader(src, w, h)
    idx = list(range(len(vr))) if indices is None else [int(i) for i in indices]
    if not idx:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return vr.get_batch(idx).asnumpy()


def evenly_spaced(frames: np.ndarray, n: int) -> np.ndarray:
    """At most `n` frames, evenly spaced, first and last included."""
    idx = np.unique(np.linspace(0, len(frames) - 1, min(len(frames), n)).round().astype(int))
    return frames[idx]


def encode_mp4(frames: np.ndarray | Sequence[np.ndarray], fps: float, crf: int = 18, path: str | Path | None = None) -> bytes:
    """Encode uint8 RGB frames as H.264 yuv420p MP4 (odd sizes are cropped to even). Returns the bytes; also writes `path`."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected frames [T, H, W, 3], got {frames.shape}")
    t, h, w, _ = frames.shape
    data = encode_video_frames(frames, fps, w - w % 2, h - h % 2, crf=crf)
    if path is not None:
        Path(path).write_bytes(data)
    return data


def x264_options(crf: int) -> dict[str, str]:
    """libx264's options for our encodes. On CPUs with AVX-512, x264 is held to its AVX2 code: its AVX-512
    kernels made different bitstreams from the same frames in one process once torch had run in between (4
    different files from 8 encodes of one video, measured on a Xeon with AVX-512), so a seed no longer gave the
    same video. Capped at AVX2 (or with no asm) the 8 encodes are byte-identical."""
    options = {"crf": str(crf), "preset": "veryfast"}
    if _cpu_has_avx512():
        options["x264-params"] = "asm=AVX2"
    return options


@functools.lru_cache(maxsize=1)
def _cpu_has_avx512() -> bool:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: x264 keeps its own choice
        return False
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return "avx512f" in flags and "avx2" in flags


def encode_video_frames(frames: Iterable, fps: float, width: int, height: int, crf: int = 18) -> bytes:
    """Encode frames (uint8 RGB arrays, cropped to width x height, or decoded `av.VideoFrame`s, scaled to it)
    as H.264 yuv420p MP4 bytes, limited ("tv") range and tagged so. Passing decoded frames skips the round trip
    through RGB; full-range frames (mjpeg's yuvj420p, H.264 with the full-range flag) are converted."""
    import av

    if width % 2 or height % 2 or width < 2 or height < 2:
        raise ValueError(f"width and height must be even and >= 2, got {width}x{height}")
    buf = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1001)
    n = 0
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.color_range = LIMITED_RANGE
        stream.options = x264_options(crf)
        for frame in frames:
            if isinstance(frame, av.VideoFrame):
                vf = resize_frame(frame, width, height)
            else:
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:height, :width]), format="rgb24")
            vf.pts, vf.time_base = n, 1 / rate  # our own clock: decoded frames carry their source's timestamps
            for packet in stream.encode(vf):
                container.mux(packet)
            n += 1
        if n == 0:
            raise ValueError("no frames to encode")
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


# -- the curator's single pass: frames with their timestamps, resized without swscale where it is slow ---------

LIMITED_RANGE, FULL_RANGE = 1, 2  # AVColorRange: MPEG ("tv", 16-235) and JPEG ("pc", 0-255)
_LUMA_FIRST = ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12", "nv21", "gray")


@dataclass(frozen=True)
class DecodeError:
    """A packet the decoder rejected; decoding goes on with the next one."""

    reason: str


def decode_packets(container, stream) -> Iterator:
    """Decoded frames of `stream` in order, with a `DecodeError` in their place for each packet that fails to
    decode (the frames around it still come). A container that cannot be read any further ends the iteration
    with the `av.error.FFmpegError` raised (truncated files)."""
    import av

    for packet in container.demux(stream):
        try:
            frames = stream.decode(packet)
        except av.error.FFmpegError as e:
            lines = str(e).strip().splitlines()
            yield DecodeError(f"{type(e).__name__}: {lines[0] if lines else ''}"[:200])
            continue
        yield from frames


class Prefetch:
    """Iterate `items` in a background thread, up to `depth` ahead, as PySceneDetect's SceneManager runs its
    decoder: FFmpeg decodes the next frames (outside the GIL) while the caller works on this one. An exception
    in the thread is raised to the caller where the item would have been. Use it as a context manager: leaving
    it stops and joins the thread (before the container it reads is closed)."""

    def __init__(self, items: Iterator, depth: int = 8):
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(items,), name="decode", daemon=True)
        self._thread.start()

    def _put(self, entry) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, items: Iterator) -> None:
        try:
            for item in items:
                if not self._put((True, item)):
                    return
        except BaseException as e:  # handed to the consumer
            self._put((False, e))
            return
        self._put((False, None))

    def __iter__(self):
        return self

    def __next__(self):
        ok, item = self._queue.get()
        if ok:
            return item
        self._queue.put((False, item))  # stay exhausted
        if item is None:
            raise StopIteration
        raise item

    def __enter__(self) -> "Prefetch":
        return self

    def __exit__(self, *exc) -> None:
        import queue

        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


@dataclass(frozen=True)
class StreamClock:
    """Presentation timestamps of one video stream, in its own time base.

    `seconds(pts)` is the true time of a frame on the stream's clock (a stream whose first frame is at 2.5 s
    starts at 2.5). `frame_number(pts)` is the frame number PySceneDetect reports for it: the time since the
    stream's first timestamp (OpenCV's CAP_PROP_POS_MSEC, which PySceneDetect reads in microseconds) times the
    stream's average frame rate, rounded; on constant-frame-rate video that is the decode index.
    `nominal_fps` is the constant rate clips are re-timed to by default: FFmpeg's guess for the stream
    (`r_frame_rate`, the rate a variable-frame-rate recording's fastest stretch plays at), else the average.
    """

    time_base: Fraction
    start: int  # the stream's first timestamp
    average_fps: Fraction  # as PySceneDetect's OpenCV backend reads it
    nominal_fps: float

    @classmethod
    def of(cls, stream, fallback_fps: float) -> "StreamClock":
        from scenedetect.common import framerate_to_fraction

        avg = stream.average_rate
        average = framerate_to_fraction(float(avg) if avg and float(avg) > 0 else fallback_fps)
        guessed = stream.guessed_rate
        nominal = float(guessed) if guessed and 0 < float(guessed) <= 240 else float(average)
        tb = stream.time_base or Fraction(1, 90000)
        return cls(Fraction(tb.numerator, tb.denominator), int(stream.start_time or 0), average, nominal)

    @property
    def frame_ticks(self) -> int:
        """One nominal frame in time-base units (at least 1)."""
        return max(1, round(1 / (self.nominal_fps * self.time_base)))

    def seconds(self, pts: int) -> float:
        return float(pts * self.time_base)

    def microseconds(self, pts: int) -> int:
        """Time since the stream's start the way OpenCV computes it (a double, in ms) and PySceneDetect rounds it."""
        ms = (pts - self.start) * (self.time_base.numerator / self.time_base.denominator) * 1000.0
        return round(ms * 1000)

    def frame_number(self, pts: int) -> int:
        return round(self.microseconds(pts) / 1e6 * float(self.average_fps))


def frame_luma(frame) -> float:
    """Mean luma of a decoded frame on the 0-255 RGB scale (a black frame is below ~16), from a sparse grid of
    the Y plane: a few microseconds, so every frame can have one."""
    name = frame.format.name
    if name in _LUMA_FIRST:
        y = _plane(frame.planes[0])
        mean = float(y[:: max(1, y.shape[0] // 48), :: max(1, y.shape[1] // 64)].mean())  # about 48 x 64 samples
        if frame.color_range == FULL_RANGE or name.startswith("yuvj") or name == "gray":
            return mean
        return min(255.0, max(0.0, (mean - 16.0) * 255.0 / 219.0))
    return float(frame.reformat(width=64, height=36, format="gray").to_ndarray().mean())


def is_full_range(frame) -> bool:
    return frame.color_range == FULL_RANGE or frame.format.name.startswith("yuvj")


def resize_frame(frame, width: int, height: int):
    """A decoded frame as limited-range yuv420p at (width, height): 8-bit 4:2:0 frames are resized plane by
    plane with OpenCV (several times cheaper than swscale at large factors), anything else through swscale,
    which also converts full range to limited."""
    import av

    if frame.width == width and frame.height == height and frame.format.name == "yuv420p" and not is_full_range(frame):
        return frame
    if frame.format.name == "yuv420p" and not is_full_range(frame) and width % 2 == 0 and height % 2 == 0:
        out = av.VideoFrame.from_ndarray(_shrink_i420(frame, width, height), format="yuv420p")
        out.color_range = LIMITED_RANGE
        return out
    kwargs = {"src_color_range": FULL_RANGE, "dst_color_range": LIMITED_RANGE} if is_full_range(frame) else {}
    out = frame.reformat(width=width, height=height, format="yuv420p", **kwargs)
    out.color_range = LIMITED_RANGE
    return out


def small_rgb(frame, width: int, height: int) -> np.ndarray:
    """A decoded frame shrunk to uint8 RGB at (width, height), for the filters. Limited-range 8-bit 4:2:0 frames
    are shrunk plane by plane with OpenCV and converted after (BT.601, several times cheaper than converting the
    full frame first); other frames are converted by swscale at full size (honouring their range), then shrunk."""
    import cv2

    if frame.format.name == "yuv420p" and not is_full_range(frame) and width % 2 == 0 and height % 2 == 0:
        return cv2.cvtColor(_shrink_i420(frame, width, height), cv2.COLOR_YUV2RGB_I420)
    return shrink_plane(frame.to_ndarray(format="rgb24"), width, height)


def to_bgr(frame) -> np.ndarray:
    """A decoded frame as uint8 BGR at its own size, converted by swscale as OpenCV's VideoCapture converts it
    (bit for bit), honouring the frame's colour range. In one thread: the decoder's threads have the other cores,
    and swscale's own threads cost more than they save, in CPU time and (measured on 720p) in wall time."""
    return frame.reformat(format="bgr24", threads=1).to_ndarray()


def sampled_bgr(frame, width: int, height: int, reformatter=None) -> np.ndarray | None:
    """`cv2.resize(to_bgr(frame), (width, height), interpolation=cv2.INTER_LINEAR)` bit for bit, converting only
    the pixels that resize reads; None where this shortcut does not apply (then do the full conversion).

    It applies to a limited-range yuv420p frame shrunk by an odd whole factor k on both axes (1280x720 and
    3840x2160 to 256x144): INTER_LINEAR then reads source pixel k*i + k//2 alone for output pixel i (weights 1 and
    0), and swscale's yuv420p-to-BGR conversion gives each pixel from its own luma and its 2x2 block's chroma. So
    those pixels, each repeated 2x2 into a small yuv420p frame with the source's colour tags, convert to the same
    bytes from a sixth of 720p's pixels (measured per frame: about the same time as the full path on 720p, where
    Python's overhead dominates, and a quarter of it on 4K). `reformatter`: a PyAV VideoReformatter of the
    caller's own (a detector in its own thread)."""
    import av
    import cv2

    fw, fh = frame.width, frame.height
    kx, ky = fw // width, fh // height
    if (frame.format.name != "yuv420p" or is_full_range(frame) or kx * width != fw or ky * height != fh
            or kx % 2 == 0 or ky % 2 == 0 or (kx, ky) == (1, 1)):
        return None
    y, u, v = (_plane(p) for p in frame.planes)
    rows, cols = np.arange(height) * ky + ky // 2, np.arange(width) * kx + kx // 2
    small = av.VideoFrame(2 * width, 2 * height, "yuv420p")
    sy, su, sv = (_plane(p) for p in small.planes)
    sy[:] = cv2.resize(np.ascontiguousarray(y[ky // 2 :: ky, kx // 2 :: kx]), (2 * width, 2 * height),
                       interpolation=cv2.INTER_NEAREST)
    su[:] = u[rows >> 1][:, cols >> 1]
    sv[:] = v[rows >> 1][:, cols >> 1]
    small.color_range, small.colorspace = frame.color_range, frame.colorspace
    bgr = (reformatter.reformat(small, format="bgr24", threads=1) if reformatter is not None
           else small.reformat(format="bgr24", threads=1)).to_ndarray()
    return cv2.resize(bgr, (width, height), interpolation=cv2.INTER_NEAREST)  # every other pixel: [::2, ::2]


def shrink_plane(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an image (or one plane): an integer-factor area average (fast in OpenCV) down to under 2x the
    target, then bilinear. Plain INTER_AREA at a fractional factor costs several times more; plain bilinear
    aliases."""
    import cv2

    h, w = img.shape[:2]
    if w == width and h == height:
        return img
    k = min(w // width, h // height)
    if k >= 2:
        img = cv2.resize(img, (w // k, h // k), interpolation=cv2.INTER_AREA)
    if img.shape[1] == width and img.shape[0] == height:
        return img
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


def _shrink_i420(frame, width: int, height: int) -> np.ndarray:
    """A yuv420p frame's planes shrunk to (width, height), packed as OpenCV's I420 [height * 3 / 2, width]."""
    y, u, v = (_plane(p) for p in frame.planes)
    data = np.concatenate([shrink_plane(y, width, height).ravel(), shrink_plane(u, width // 2, height // 2).ravel(),
                           shrink_plane(v, width // 2, height // 2).ravel()])
    return data.reshape(height * 3 // 2, width)


def _plane(plane) -> np.ndarray:
    """One 8-bit plane of a decoded frame as a [height, width] view (rows are `line_size` apart)."""
    return np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: plane.height, : plane.width]


def to_gray(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] uint8 RGB -> [T, H, W] uint8 luma (BT.601, like OpenCV)."""
    import cv2

    return np.stack([cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]) if len(frames) else \
        np.zeros((0, 0, 0), np.uint8)
