"""Turn curated shard samples into model-ready tensors: frames at the training fps, resized, centre-cropped, in [-1, 1].

Also the plain sequential shard reader every command uses to read curated shards (train's preparation pass,
negatives, eval): a bad sample is skipped with one warning line and counted, never stops a pass. The trainer then
streams the cached tensors with its own shuffled, split-by-node loader.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import io
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

from realbase.errors import UserError, one_line
from realbase.text import MAX_CAPTION_BYTES, cap_caption  # the cap curation applies too
from realbase.video import decode_frames, video_info
from realdpo.data.cache import ClipRef
from realdpo.models.frames import to_tensor

VideoSource = bytes | bytearray | str | Path


logger = logging.getLogger(__name__)


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
        raise BadClip(f"cannot decode clip: {one_line(e, first_line=True)}") from None
    if n == 0:
        raise ClipTooShort("clip has no frames")
    idx = frame_indices(n, src_fps or fps, frames, fps, allow_repeat)
    uniq = sorted(set(idx))
    try:
        batch = decode_frames(mp4, uniq)
    except Exception as e:
        raise BadClip(f"cannot decode clip frames: {one_line(e, first_line=True)}") from None
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


def expand_shards(patterns: Iterable[str | Path], option: str = "--shards") -> list[str]:
    """Paths or globs -> sorted, de-duplicated shard files. A pattern that matches nothing is warned about when
    others match; UserError if nothing matches at all."""
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
    for pat in missing:
        logger.warning("%s %s matches no file (reading the %d shard(s) the other patterns match)", option, pat,
                       len(files))
    return sorted(files)


@dataclass
class ShardReport:
    """What one pass over the shards kept and skipped: `kept` samples, `skipped` by reason, and the usable
    samples whose caption was cut to MAX_CAPTION_BYTES or is blank (kept only with allow_blank_captions)."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    cut_captions: int = 0
    blank_captions: int = 0

    def summary(self) -> str:
        parts = [f"{self.kept} usable sample(s)"]
        if self.skipped:
            reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped.most_common())
            parts.append(f"skipped {sum(self.skipped.values())} ({reasons})")
        if self.cut_captions:
            parts.append(f"{self.cut_captions} caption(s) cut to {MAX_CAPTION_BYTES} bytes")
        if self.blank_captions:
            parts.append(f"{self.blank_captions} with a blank caption (kept: --allow-blank-captions)")
        return "; ".join(parts)



def _shard_handler(urls: Sequence[str], report: ShardReport, warn: bool):
    """webdataset's handler for a shard it cannot read on (not a tar, truncated, unreadable): one warning and one
    count per shard, and reading goes on with the next shard."""
    failed: set[str] = set()

    def handle(exn: Exception) -> bool:
        text = " ".join(str(a) for a in exn.args)  # webdataset appends the url, or the stream's repr, to the args
        url = max((u for u in urls if u in text), key=len, default="a shard")
        if url not in failed:
            failed.add(url)
            report.skipped["unreadable or truncated shard"] += 1
            if warn:
                reason = one_line(Exception(str(exn.args[0]).split(" @ ")[0]) if exn.args else exn, 160)
                logger.warning("skipping the rest of %s: %s (%s)", url, reason, type(exn).__name__)
        return True

    return handle


def _check_sample(s: dict[str, Any], seen: dict[str, str], allow_blank: bool) -> tuple[ClipSample | None, str, str]:
    """(the sample, "", "") or (None, reason counted in the summary, detail for the warning line)."""
    key, url = s["__key__"], s.get("__url__", "?")
    if "mp4" not in s:
        return None, "no mp4 member", f"members: {', '.join(sorted(k for k in s if not k.startswith('__')))}"
    if key in seen:
        return None, "duplicate key", f"the same key is in {seen[key]} (kept the first)"
    raw = s.get("json")
    if raw is None:
        return None, "no json member", "a curated sample has mp4, txt, jpg and json members"
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError is a ValueError; deep nesting recurses
        return None, "json member not valid JSON", one_line(e, 120)
    if not isinstance(meta, dict):
        return None, "json member not an object", f"it holds a {type(meta).__name__}"
    try:
        caption = (s.get("txt") or b"").decode("utf-8").strip()
    except UnicodeDecodeError as e:
        return None, "caption not UTF-8", one_line(e, 120)
    if not caption and not allow_blank:
        return None, "blank caption", "pass --allow-blank-captions to train on it without text"
    seen[key] = url
    return ClipSample(key=key, caption=caption, mp4=s["mp4"], jpg=s.get("jpg"), meta=meta), "", ""


def iter_shard_samples(urls: Iterable[str | Path], *, allow_blank_captions: bool = False,
                       report: ShardReport | None = None, warn: bool = True) -> Iterator[ClipSample]:
    """Every usable sample of the shards, in order, once (no shuffling, no node/worker splitting).

    One bad sample never stops the pass: a truncated or corrupt shard, a sample without an mp4 or json member, a
    json member that is not a JSON object, a caption that is not UTF-8, a blank caption (unless
    `allow_blank_captions`), and the second sample with a key already read are each skipped with one warning line
    and counted in `report`; a caption over MAX_CAPTION_BYTES is cut, with a warning. A summary line ends a pass
    that skipped or cut anything (`warn=False` silences the lines: other processes reading the same shards). A pass
    that finds no usable sample raises UserError.
    """
    import webdataset as wds

    urls = [str(u) for u in urls]
    if not urls:
        return
    report = report if report is not None else ShardReport()
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False,
                        handler=_shard_handler(urls, report, warn))
    seen: dict[str, str] = {}
    for s in ds:
        sample, reason, detail = _check_sample(s, seen, allow_blank_captions)
        if sample is None:
            report.skipped[reason] += 1
            if warn:
                logger.warning("skipping sample %s of %s: %s (%s)", s["__key__"], s.get("__url__", "?"), reason,
                               detail)
            continue
        capped = cap_caption(sample.caption)
        if capped is not sample.caption:
            report.cut_captions += 1
            if warn:
                logger.warning("caption of %s in %s is %d bytes: cut to %d", sample.key, seen[sample.key],
                               len(sample.caption.encode("utf-8")), len(capped.encode("utf-8")))
            sample.caption = capped
        report.blank_captions += not sample.caption  # allowed: counted in the summary line, not warned one by one
        report.kept += 1
        yield sample
    if report.kept == 0:
        raise UserError(f"no usable samples in {len(urls)} shard(s): {report.summary()}")
    if warn and (report.skipped or report.cut_captions or report.blank_captions):
        logger.warning("shards read: %s", report.summary())
