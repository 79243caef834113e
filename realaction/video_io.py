"""Decode and encode videos: decord for reading (files or bytes), PyAV/libx264 for writing."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

VideoSource = str | Path | bytes


def _reader(src: VideoSource, width: int = -1, height: int = -1):
    import decord

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


def encode_video_frames(frames: Iterable, fps: float, width: int, height: int, crf: int = 18) -> bytes:
    """Encode frames (uint8 RGB arrays, cropped to width x height, or decoded `av.VideoFrame`s, scaled to it)
    as H.264 yuv420p MP4 bytes. Passing decoded frames skips the round trip through RGB."""
    import av

    if width % 2 or height % 2 or width < 2 or height < 2:
        raise ValueError(f"width and height must be even and >= 2, got {width}x{height}")
    buf = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1001)
    n = 0
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in frames:
            if isinstance(frame, av.VideoFrame):
                vf = frame.reformat(width=width, height=height, format="yuv420p")
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
