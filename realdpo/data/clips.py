"""Turn curated shard samples into model-ready tensors: frames at the training fps, resized, centre-cropped, in [-1, 1].

Also a plain sequential shard reader for preparation passes (negatives, eval); the trainer streams with its own
shuffled, split-by-node loader.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from realaction.errors import UserError
from realaction.video_io import decode_frames, video_info
from realdpo.data.cache import ClipRef
from realdpo.models.frames import to_tensor

VideoSource = bytes | bytearray | str | Path


class BadClip(ValueError):
    """A clip that cannot be turned into training frames (undecodable, or too short); callers skip it."""


class ClipTooShort(BadClip):
    """The clip has fewer source frames than `frames` at `fps` need (the caller decides: skip, or pass allow_repeat)."""


@dataclass
class ClipSample:
    key: str
    caption: str
    mp4: bytes
    jpg: bytes | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def content_id(self) -> str:
        """16 hex chars over what the clip's cache entries are made from: key, caption, mp4 bytes, and the shard
        json's source_sha256, start_frame/end_frame and curator config hash. Hashed once per sample read."""
        curator = self.meta.get("curator")
        origin = {"source_sha256": self.meta.get("source_sha256"), "start_frame": self.meta.get("start_frame"),
                  "end_frame": self.meta.get("end_frame"),
                  "config_hash": curator.get("config_hash") if isinstance(curator, dict) else None}
        h = hashlib.sha256()
        for part in (self.key.encode(), self.caption.encode("utf-8"), json.dumps(origin, sort_keys=True).encode()):
            h.update(len(part).to_bytes(8, "little") + part)
        h.update(self.mp4)
        return h.hexdigest()[:16]

    @property
    def ref(self) -> ClipRef:
        return ClipRef(self.key, self.content_id)


def _cover_size(src_w: int, src_h: int, width: int, height: int) -> tuple[int, int]:
    """Smallest (w, h) with the source's aspect ratio that covers width x height (shorter-side resize)."""
    scale = max(width / src_w, height / src_h)
    return max(width, math.ceil(src_w * scale - 1e-6)), max(height, math.ceil(src_h * scale - 1e-6))


def _center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = frames.shape[1:3]
    top, left = (h - height) // 2, (w - width) // 2
    return frames[:, top:top + height, left:left + width]


def _resize_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [T, h, w, 3] -> shorter-side resized (area filter when shrinking) and centre-cropped [T, H, W, 3]."""
    import cv2

    src_h, src_w = frames.shape[1:3]
    w, h = _cover_size(src_w, src_h, width, height)
    if (w, h) != (src_w, src_h):
        interp = cv2.INTER_AREA if w < src_w else cv2.INTER_CUBIC
        frames = np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in frames])
    return _center_crop(frames, height, width)


def frame_indices(num_src_frames: int, src_fps: float, frames: int, fps: float, allow_repeat: bool = False) -> list[int]:
    """Source frame indices of `frames` frames sampled at `fps` from the start (nearest earlier source frame)."""
    step = src_fps / fps
    idx = [int(i * step + 1e-6) for i in range(frames)]
    if idx[-1] >= num_src_frames:
        if not allow_repeat:
            need = (frames - 1) / fps
            have = num_src_frames / src_fps
            raise ClipTooShort(f"clip is {have:.2f}s ({num_src_frames} frames at {src_fps:.3g} fps); "
                               f"{frames} frames at {fps:g} fps need more than {need:.2f}s")
        idx = [min(i, num_src_frames - 1) for i in idx]
    return idx


def decode_clip(mp4: VideoSource, frames: int, height: int, width: int, fps: float,
                allow_repeat: bool = False) -> torch.Tensor:
    """`frames` frames sampled at `fps` from the clip's start, shorter-side resized and centre-cropped to
    height x width: float [F, 3, H, W] in [-1, 1].

    A clip too short for `frames` at `fps` raises ClipTooShort (repeating the last frame would teach the model
    frozen motion); allow_repeat=True pads with the last frame instead. An undecodable clip raises BadClip.
    """
    try:
        n, src_fps, _, _ = video_info(mp4)
    except Exception as e:  # decord raises its own error types for corrupt or non-video data
        raise BadClip(f"cannot decode clip: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if n == 0:
        raise ClipTooShort("clip has no frames")
    idx = frame_indices(n, src_fps or fps, frames, fps, allow_repeat)
    uniq = sorted(set(idx))
    try:
        batch = decode_frames(mp4, uniq)
    except Exception as e:
        raise BadClip(f"cannot decode clip frames: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    pos = {j: p for p, j in enumerate(uniq)}
    return to_tensor(_resize_crop(batch[[pos[j] for j in idx]], height, width))


def first_frame(mp4: VideoSource, height: int, width: int) -> torch.Tensor:
    """The clip's first frame, resized and cropped like decode_clip: float [3, H, W] in [-1, 1]."""
    return decode_clip(mp4, 1, height, width, fps=1.0)[0]


def load_image(src: bytes | str | Path, height: int, width: int) -> torch.Tensor:
    """An image file or bytes (PNG, JPG, ...), shorter-side resized and centre-cropped: float [3, H, W] in [-1, 1]."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else str(src))
        img = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read image {src if not isinstance(src, (bytes, bytearray)) else '<bytes>'}: {e}") from None
    return to_tensor(_resize_crop(np.asarray(img)[None], height, width))[0]


def expand_shards(patterns: Iterable[str | Path]) -> list[str]:
    """Paths or globs -> sorted, de-duplicated shard files; UserError if nothing matches."""
    files: set[str] = set()
    missing = []
    for pat in patterns:
        pat = str(pat)
        hits = [pat] if Path(pat).is_file() else [p for p in glob.glob(pat, recursive=True) if Path(p).is_file()]
        if not hits:
            missing.append(pat)
        files.update(hits)
    if not files:
        shown = ", ".join(missing) or "(none given)"
        raise UserError(f"no shard files match {shown}")
    return sorted(files)


def iter_shard_samples(urls: Iterable[str | Path]) -> Iterator[ClipSample]:
    """Every sample of the shards, in order, once (no shuffling, no node/worker splitting). A truncated or
    corrupt shard is reported (logging warning) and reading goes on with the next one."""
    import webdataset as wds

    urls = [str(u) for u in urls]
    if not urls:
        return
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False,
                        handler=wds.warn_and_continue)
    for s in ds:
        if "mp4" not in s:
            continue
        meta = s.get("json")
        yield ClipSample(
            key=s["__key__"],
            caption=(s.get("txt") or b"").decode("utf-8").strip(),
            mp4=s["mp4"],
            jpg=s.get("jpg"),
            meta=json.loads(meta) if meta else {},
        )
