"""Curate one source video: its stages, in order, in `Curator._curate` (the source) and `Curator._judge` (a clip).

A source is probed, then decoded once (`realaction.single_pass`): the cut detector and the segmenter turn
the frames into candidate clips as they arrive. Each candidate is judged on a second thread as soon as it is
released: fade trim, the cheap filters (quality, motion), the model filters (text, person, CLIP), the caption,
and for a kept clip the re-timed, resized encode (`realaction.output.samples`). OpenCV and x264 run outside the
GIL, so judging overlaps decoding.

A kept clip is re-timed to a constant frame rate (`--fps`, else the source's nominal rate): output frame j shows
the source frame on screen at the middle of its slot, `start_s + (j + 0.5) / fps`, so variable-frame-rate footage
plays at its true speed (frames are repeated or dropped; on constant-frame-rate footage at its own rate nothing is).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from bisect import bisect_right
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from realaction import __version__
from realaction.captions.captioners import CaptionRequest, build_captioner
from realaction.config import CurateConfig
from realaction.decoding.probe import ProbeError, Source, VideoProbe, probe, sha256_file
from realaction.decoding.segments import Segment
from realaction.filters.model_filters import ModelFilters
from realaction.filters.motion import motion_reasons, motion_scores
from realaction.filters.quality import fade_trim, quality_reasons, quality_scores
from realaction.options import CaptionOptions, FilterOptions
from realaction.output.samples import ClipResult, SourceResult, clip_row, clip_sample, error_reason
from realaction.single_pass import Candidate, DecodePass, HeldBytes
from realbase.video import to_gray

MAX_CLIPS_IN_FLIGHT = 3  # candidate clips queued for the scoring/encoding thread (each holds its frames)


def config_hash(cfg: CurateConfig) -> str:
    """Hash of the options that shape the output (not where it is read from or written to)."""
    items = {k: str(v) for k, v in sorted(asdict(cfg).items()) if k not in ("src", "out", "workers", "engine", "ray_address")}
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


class Models:
    """Model filters, CLIP model and captioner: built once per worker process."""

    def __init__(self, filters: FilterOptions, captions: CaptionOptions):
        self.clip = None
        if filters.clip_checkpoint is not None:
            from realbase.clip_model import ClipModel

            self.clip = ClipModel.load(filters.clip_arch, Path(filters.clip_checkpoint))
        self.filters = ModelFilters(filters, self.clip)
        self.captioner = build_captioner(captions, self.clip)

    @classmethod
    def of(cls, cfg: CurateConfig) -> Models:
        return cls(cfg.filters, cfg.captions)


def _non_finite(scores: dict) -> list[str]:
    """["non-finite-score"] when any score is NaN or infinite (its manifest value is then null), else []."""
    return ["non-finite-score"] if any(not math.isfinite(v) for v in scores.values()) else []


@dataclass
class _Job:
    """What the scoring thread needs to know about the source a clip comes from."""

    src: Source
    info: VideoProbe
    sha: Future
    clock: object  # the source's StreamClock (None when nothing was decoded)
    out_fps: float
    out_size: tuple[int, int]  # as written (upright, square pixels)
    coded_out: tuple[int, int]  # the decoded frames' size to scale to before turning them upright


@dataclass
class _Clip:
    """A candidate clip as the stages of `_judge` see it: trimmed range, scores so far, reasons it is rejected."""

    c: Candidate
    a: int  # first frame after the fade trim, relative to the candidate's start
    b: int  # end (exclusive) after the trim
    lead: int
    trail: int
    idx: np.ndarray  # decode indices of the analysis frames inside [a, b)
    rgb: np.ndarray  # those frames
    scores: dict = field(default_factory=dict)
    reasons: list = field(default_factory=list)
    hashes: list = field(default_factory=list)
    moving: list = field(default_factory=list)
    caption: object = None
    caption_error: str | None = None


class Curator:
    """Runs one source through every stage; `progress(frames, clips)` is called as work advances."""

    def __init__(self, cfg: CurateConfig, models: Models, progress: Callable[[int, int], None] | None = None):
        self.decode, self.cuts, self.filters = cfg.decode, cfg.cuts, cfg.filters
        self.models = models
        self.src_root = Path(cfg.src)
        self.progress = progress or (lambda frames, clips: None)
        self.curator = {"name": "realaction", "version": __version__, "config_hash": config_hash(cfg)}
        self._scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score")
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self._in_flight: deque[Future] = deque()
        self._held = HeldBytes()

    def run(self, src: Source) -> SourceResult:
        """Curate one source. Its clips may still be in the works: call `.resolve()` on the result before use
        (the next source can be decoded meanwhile)."""
        t0 = time.perf_counter()
        base = {"source": src.rel, "source_id": src.source_id}
        try:
            info = probe(src.path)
        except ProbeError as e:
            return SourceResult({**base, "status": "error", "reason": str(e)})
        try:
            sha = self._hasher.submit(sha256_file, src.path)  # hashing overlaps decoding
            result = self._curate(src, info, sha, base)
        except Exception as e:  # a failure inside one video must not stop the run
            return SourceResult({**base, "status": "error", "reason": error_reason(e)})
        result.row["seconds"] = round(time.perf_counter() - t0, 3)
        return result

    # -- the source's stages (this thread) ----------------------------------------------------------------------

    def _curate(self, src: Source, info: VideoProbe, sha: Future, base: dict) -> SourceResult:
        row = {**base, "status": "done", "probe": info.to_dict(), "config_hash": self.curator["config_hash"]}
        if min(info.width, info.height) < self.decode.min_short_side:
            return self._low_resolution(src, info, sha, row)
        clips: list[Future] = []
        with DecodePass(src.path, info, self.decode, self.cuts, self._held, self.progress) as decoded:
            job = _Job(src, info, sha, decoded.clock, decoded.out_fps, decoded.out_size, decoded.coded_out)
            for candidate in decoded.candidates():  # decode -> cut detection -> segments, one pass
                clips.append(self._submit(job, len(clips), candidate))  # judged on the scoring thread
            row.update(decoded.row(), source_sha256=sha.result())
        return SourceResult(row, clips)

    def _low_resolution(self, src: Source, info: VideoProbe, sha: Future, row: dict) -> SourceResult:
        """Nothing in a source below --min-short-side can pass: one whole-video candidate, no decoding."""
        done: Future = Future()
        job = _Job(src, info, sha, None, info.fps, (info.width, info.height), (info.coded_width, info.coded_height))
        done.set_result(ClipResult(clip_row(job.src, 0, Segment(0, info.num_frames, 0), 0.0, info.duration,
                                            (0, info.num_frames), {"short_side": float(min(info.width, info.height))},
                                            ["low-resolution"])))
        self.progress(0, 1)
        row.update(cuts=[], cuts_pts=[], frames_decoded=0, source_sha256=sha.result())
        return SourceResult(row, [done])

    def _submit(self, job: _Job, clip_index: int, candidate: Candidate) -> Future:
        while len(self._in_flight) >= MAX_CLIPS_IN_FLIGHT:  # bounds the decoded frames held in memory
            self._in_flight.popleft().exception()
        fut = self._scorer.submit(self._judge_and_release, job, clip_index, candidate)
        self._in_flight.append(fut)
        return fut

    # -- a clip's stages (the scoring thread) -------------------------------------------------------------------

    def _judge_and_release(self, job: _Job, clip_index: int, c: Candidate) -> ClipResult:
        try:
            return self._judge(job, clip_index, c)
        finally:
            self._held.add(-c.held_bytes)
            c.frames = None

    def _judge(self, job: _Job, clip_index: int, c: Candidate) -> ClipResult:
        """One candidate clip, stage by stage; a stage runs only while nothing has rejected the clip."""
        if c.segment.corrupt:
            return self._finish(job, clip_index, None, c)
        clip = self._trim(c)  # fade and black ends
        self._cheap_filters(clip)  # quality, motion, length
        if not clip.reasons:
            self._model_filters(clip)  # text, person, CLIP: they cost more than the rest together
        if not clip.reasons:
            self._caption(job, clip_index, clip)
        return self._finish(job, clip_index, clip, c)

    def _trim(self, c: Candidate) -> _Clip:
        lead, trail = fade_trim(c.luma)
        s = c.segment
        a, b = lead, s.length - trail  # the clip after trimming, relative to s.start
        keep = (c.idx >= s.start + a) & (c.idx < s.start + b)
        return _Clip(c, a, b, lead, trail, c.idx[keep], c.rgb[keep])

    def _cheap_filters(self, clip: _Clip) -> None:
        c, s, a, b, idx = clip.c, clip.c.segment, clip.a, clip.b, clip.idx
        gray = to_gray(clip.rgb)
        clip.scores = {**quality_scores(gray), **motion_scores(gray, c.times[idx - s.start] if len(idx) else idx)}
        clip.scores["fade"] = float((clip.lead + clip.trail) / s.length)
        reasons = []
        if b <= a:
            reasons.append("black")
        elif s.too_short or c.times[b] - c.times[a] < self.cuts.min_seconds - 1e-6:
            reasons.append("too-short")
        reasons += [r for r in quality_reasons(clip.scores, self.filters) + motion_reasons(clip.scores, self.filters)
                    if r not in reasons]
        clip.reasons = _non_finite(clip.scores) + reasons  # a NaN compares false with every threshold: never passes

    def _model_filters(self, clip: _Clip) -> None:
        verdict = self.models.filters.judge(clip.rgb)
        clip.scores.update(verdict.scores)
        clip.reasons += _non_finite(verdict.scores) + verdict.reasons
        clip.hashes, clip.moving = verdict.hashes, verdict.motion_hashes

    def _caption(self, job: _Job, clip_index: int, clip: _Clip) -> None:
        times = clip.c.times
        caption = self.models.captioner.caption(CaptionRequest(
            source=job.src.path, src_root=self.src_root, clip_index=clip_index,
            start_s=float(times[clip.a]), end_s=float(times[clip.b]), frames=clip.rgb))
        clip.caption_error = caption.error if caption is not None else None
        if caption is None or not caption.text.strip():
            clip.reasons.append("no-caption")
            caption = None
        clip.caption = caption

    def _finish(self, job: _Job, clip_index: int, clip: _Clip | None, c: Candidate) -> ClipResult:
        """The manifest row, and for a kept clip its sample (re-timed, resized, encoded)."""
        s = c.segment
        self.progress(0, 1)
        if clip is None:  # corrupt frames
            return ClipResult(clip_row(job.src, clip_index, s, c.times[0], c.times[-1], (c.numbers[0], c.numbers[-1]),
                                       {"corrupt_frames": float(s.length)}, ["corrupt"]))
        a, b = (clip.a, clip.b) if clip.b > clip.a else (0, s.length)  # black throughout: the candidate's range
        trimmed = Segment(s.start + a, s.start + b, s.scene, s.too_short)
        row = clip_row(job.src, clip_index, trimmed, float(c.times[a]), float(c.times[b]), (c.numbers[a], c.numbers[b]),
                       clip.scores, clip.reasons)
        if clip.caption_error:
            row["caption_error"] = clip.caption_error
        if clip.lead or clip.trail:
            row["trimmed"] = [clip.lead, clip.trail]
        if clip.hashes and not clip.reasons:
            row["phash"] = clip.hashes  # the driver's near-duplicate check (realaction.filters.dedup)
            if clip.moving:
                row["mhash"] = clip.moving
        if clip.reasons:
            return ClipResult(row)
        frames = [c.frames[k - s.start] for k in _output_indices(c.times, a, b, job.out_fps, s.start)]
        return ClipResult(row, clip_sample(job, trimmed, row, frames, clip.caption, self.curator))


def _output_indices(times: np.ndarray, a: int, b: int, fps: float, offset: int) -> list[int]:
    """Re-timing to constant frame rate: output frame j shows the source frame on screen at the middle of its
    slot. `times` are the candidate's frame times (plus its end); the clip is frames [a, b) of it."""
    start, end = float(times[a]), float(times[b])
    n_out = max(1, int(round((end - start) * fps)))
    starts = times[a:b]
    return [offset + a + max(0, bisect_right(starts, start + (j + 0.5) / fps) - 1) for j in range(n_out)]
