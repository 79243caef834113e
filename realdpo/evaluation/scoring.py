"""Per-video work run in the worker processes: decode once, motion metrics, small crops for CLIP/I3D and strips."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from realbase.errors import one_line
from realbase.video import evenly_spaced
from realdpo.evaluation.motion import motion_scores
from realdpo.evaluation.videos import center_square, decode_small

FVD_FRAMES = 16  # I3D clip length (StyleGAN-V / common FVD code)
STRIP_FRAMES = 6
STRIP_HEIGHT = 96


@dataclass(frozen=True)
class Column:
    """A report column that is a mean over a method's videos: of the per-video score `key`, times `scale`. Such columns
    get bootstrap intervals and paired differences."""

    key: str
    scale: float = 1.0
    higher_is_better: bool = True


@dataclass(frozen=True)
class FrameScorer:
    """A plug-in score for each decoded video, supplied by a consumer of the library (the motion lab's physics
    tracker is one, plugged in by `realdpo eval --lab`). `score` must be a module-level function (the workers
    receive it by reference): uint8 frames [F, H, W, 3] -> scores, under keys prefixed `name`_. `columns` are the
    report's columns made of them (means over a method's videos), in the table's order."""

    name: str
    score: Callable[[np.ndarray], dict]
    settings: dict = field(default_factory=dict)  # tolerances and definitions, copied into the report
    columns: dict[str, Column] = field(default_factory=dict)


@dataclass
class Job:
    method: str  # "" for a real clip (FVD reference)
    index: int
    name: str
    src: Path | bytes
    short_side: int
    sample_fps: float
    motion: bool = True
    clip_frames: int | None = None  # None: no CLIP; 0: every frame; n: n evenly spaced frames
    fvd: bool = False
    strip: bool = False
    scorer: FrameScorer | None = None  # a plug-in score (e.g. the motion lab's tracker for --lab)


@dataclass
class Result:
    method: str
    index: int
    name: str
    scores: dict = field(default_factory=dict)
    error: str | None = None
    clip_images: np.ndarray | None = None  # uint8 [n, H, W, 3] at the working size
    fvd_clip: np.ndarray | None = None  # uint8 [16, 224, 224, 3]
    strip: np.ndarray | None = None  # uint8 [STRIP_HEIGHT, W, 3]


def init_worker() -> None:
    cv2.setNumThreads(1)  # one video per process; the pool supplies the parallelism


def strip_of(frames: np.ndarray, n: int = STRIP_FRAMES, height: int = STRIP_HEIGHT) -> np.ndarray:
    h, w = frames.shape[1:3]
    tw = max(2, int(round(w * height / h)))
    gap = np.full((height, 2, 3), 255, np.uint8)
    thumbs = []
    for frame in evenly_spaced(frames, n):
        thumbs += [cv2.resize(frame, (tw, height), interpolation=cv2.INTER_AREA), gap]
    return np.concatenate(thumbs[:-1], axis=1)


def run_job(job: Job) -> Result:
    res = Result(job.method, job.index, job.name)
    try:
        frames, fps, (w, h) = decode_small(job.src, job.short_side)
    except Exception as e:  # an unreadable file is reported, not fatal
        res.error = f"cannot decode: {one_line(e, 200, first_line=True)}"
        return res
    res.scores.update(frames=int(len(frames)), fps=round(float(fps), 3), width=int(w), height=int(h),
                      work_width=int(frames.shape[2]), work_height=int(frames.shape[1]))
    if job.motion:
        m = motion_scores(frames, fps, job.sample_fps)
        d = asdict(m)
        res.scores.update(d)
    if job.scorer is not None:
        res.scores.update(job.scorer.score(frames))
    if job.clip_frames is not None:
        res.clip_images = evenly_spaced(frames, job.clip_frames or len(frames))
    if job.fvd and len(frames) >= FVD_FRAMES:  # shorter videos are left out of FVD, as StyleGAN-V discards them
        res.fvd_clip = center_square(frames[:FVD_FRAMES])
    if job.strip:
        res.strip = strip_of(frames)
    return res
