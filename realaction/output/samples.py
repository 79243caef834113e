"""What a judged clip becomes: its manifest row, and for a kept clip its WebDataset sample (mp4, caption, first
frame, metadata), plus the result records a source's curation hands to the shard writer."""

from __future__ import annotations

import json
import math
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from realaction.cuts.scenes import rotate
from realaction.decoding.segments import Segment
from realbase.errors import one_line
from realbase.video import encode_video_frames, resize_frame


@dataclass
class ClipResult:
    row: dict  # manifest.jsonl row
    sample: dict | None = None  # WebDataset sample (bytes per member) when kept


@dataclass
class SourceResult:
    row: dict  # sources.jsonl row (status done or error)
    clips: list = field(default_factory=list)  # ClipResult, or Future[ClipResult] until resolved

    @property
    def kept(self) -> int:
        return sum(c.sample is not None for c in self.clips)

    def resolve(self) -> SourceResult:
        """Wait for the clips still being scored or encoded; a failure there turns the source into an error."""
        try:
            self.clips = [c.result() if isinstance(c, Future) else c for c in self.clips]
        except Exception as e:
            return SourceResult({k: v for k, v in self.row.items() if k in ("source", "source_id")}
                                | {"status": "error", "reason": error_reason(e)})
        if self.row.get("status") == "done":
            self.row.update(clips=len(self.clips), kept=self.kept)
        return self


def error_reason(e: BaseException) -> str:
    """A failed source's `reason`: the exception's type and first line."""
    return one_line(e, typed=True, first_line=True)


def clip_row(src, clip_index: int, s: Segment, start_s: float, end_s: float, numbers: tuple, scores: dict,
             reasons: list[str]) -> dict:
    """The manifest.jsonl row of clip `clip_index` of source `src` (a `Source`)."""
    return {
        "key": f"{src.source_id}-{clip_index:04d}", "source": src.rel, "source_id": src.source_id,
        "clip_index": clip_index, "scene": s.scene, "start_frame": s.start, "end_frame": s.end,
        "start_frame_pts": int(numbers[0]), "end_frame_pts": int(numbers[1]),
        "start_s": round(float(start_s), 4), "end_s": round(float(end_s), 4),
        "kept": not reasons, "reason": reasons[0] if reasons else None, "reasons": reasons,
        "scores": {k: round(v, 4) if math.isfinite(v) else None for k, v in scores.items()},  # JSON has no NaN
    }


def _jpeg(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def clip_sample(job, s: Segment, row: dict, frames: list, caption, curator: dict) -> dict:
    """The WebDataset sample of a kept clip: `frames` (decoded, re-timed) resized, turned upright and encoded.
    `job` says where the clip comes from and how it is written (the curator's per-source record)."""
    rotation = job.info.rotation
    cw, ch = job.coded_out
    ow, oh = job.out_size
    if rotation:
        frames = [rotate(resize_frame(f, cw, ch).to_ndarray(format="rgb24"), rotation) for f in frames]
        first = frames[0]
    else:
        first = resize_frame(frames[0], cw, ch).to_ndarray(format="rgb24")
    mp4 = encode_video_frames(frames, job.out_fps, ow, oh)
    text = caption.text.strip()
    row["caption_source"] = caption.source
    row["caption"] = text
    meta = {
        "source": job.src.rel, "source_sha256": job.sha.result(),
        "start_frame": s.start, "end_frame": s.end, "start_frame_pts": row["start_frame_pts"],
        "end_frame_pts": row["end_frame_pts"], "start_s": row["start_s"], "end_s": row["end_s"],
        "fps": job.out_fps, "width": ow, "height": oh, "num_frames": len(frames),
        "scores": row["scores"], "caption_source": caption.source, "curator": curator,
        "clip_index": row["clip_index"], "scene": s.scene, "source_fps": job.clock.nominal_fps,
    }
    return {
        "__key__": row["key"], "mp4": mp4, "txt": text.encode("utf-8"),
        "jpg": _jpeg(first), "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
    }
