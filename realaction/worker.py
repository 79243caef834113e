"""Curate one source video in a single decode pass: detect cuts, cut clips, score, caption and encode them.

Decoded frames stay as `av.VideoFrame`s (YUV, no RGB copy, not resized) in a short buffer that holds only the
clip being built: only a clip that passed the filters is resized to the output size, while it is encoded. The
cut detector sees every frame the way its own pipeline would (see `scenes`), the fade trimmer every frame's
mean luma, the filters a frame at analysis size, taken from the full decoded frame (so no score depends on
`--max-side`), when it falls on the `--analysis-fps` grid. Past a memory budget for the held frames (large
sources, slow encodes) new frames are held at the output size instead. Memory stays bounded by a few clips
(`--max-seconds`) whatever the video's length.

Time is the frames' presentation timestamps: clip lengths, `start_s`/`end_s`, the analysis grid. A kept clip is
re-timed to a constant frame rate (`--fps`, else the source's nominal rate): output frame j shows the source
frame on screen at the middle of its slot, `start_s + (j + 0.5) / fps`, so variable-frame-rate footage plays
at its true speed (frames are repeated or dropped; on constant-frame-rate footage at its own rate nothing is).

Three threads: one decodes (FFmpeg, outside the GIL, with its own threads), this one detects cuts and splits
clips, and a third scores, captions and encodes each candidate clip as soon as the cut detector releases it
(OpenCV and x264 run outside the GIL, so they overlap).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from array import array
from bisect import bisect_right
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from realaction import __version__
from realaction.motion import MIN_FLOW_SIDE, motion_reasons, motion_scores
from realaction.probe import ProbeError, Source, VideoProbe, probe, sha256_file
from realaction.quality import fade_trim, quality_reasons, quality_scores
from realaction.scenes import build_cut_detector, detect_size, rotate
from realaction.segments import Segment, Segmenter
from realbase.errors import one_line
from realbase.video import (
    DecodeError,
    Prefetch,
    StreamClock,
    decode_packets,
    encode_video_frames,
    frame_luma,
    resize_frame,
    small_rgb,
    to_gray,
)

DECODE_THREADING = "AUTO"  # FFmpeg frame + slice threads
MAX_CLIPS_IN_FLIGHT = 3  # candidate clips queued for the scoring/encoding thread (each holds its frames)
HELD_FRAMES_BUDGET = 1 << 30  # bytes of full-size decoded frames one worker holds before it shrinks new ones


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

    def resolve(self) -> "SourceResult":
        """Wait for the clips still being scored or encoded; a failure there turns the source into an error."""
        try:
            self.clips = [c.result() if isinstance(c, Future) else c for c in self.clips]
        except Exception as e:
            return SourceResult({k: v for k, v in self.row.items() if k in ("source", "source_id")}
                                | {"status": "error", "reason": _reason(e)})
        if self.row.get("status") == "done":
            self.row.update(clips=len(self.clips), kept=self.kept)
        return self


def config_hash(cfg) -> str:
    """Hash of the options that shape the output (not where it is read from or written to)."""
    items = {k: str(v) for k, v in sorted(asdict(cfg).items()) if k not in ("src", "out", "workers", "engine", "ray_address")}
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]


class Models:
    """Model filters, CLIP model and captioner: built once per worker process."""

    def __init__(self, cfg):
        self.clip = None
        if cfg.clip_checkpoint is not None:
            from realbase.clip_model import ClipModel

            self.clip = ClipModel.load(cfg.clip_arch, Path(cfg.clip_checkpoint))
        from realaction.captioners import build_captioner
        from realaction.filters import ModelFilters

        self.filters = ModelFilters(cfg, self.clip)
        self.captioner = build_captioner(cfg, self.clip)


def _jpeg(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _non_finite(scores: dict) -> list[str]:
    """["non-finite-score"] when any score is NaN or infinite (its manifest value is then null), else []."""
    return ["non-finite-score"] if any(not math.isfinite(v) for v in scores.values()) else []


def _reason(e: BaseException) -> str:
    return one_line(e, typed=True, first_line=True)


@dataclass
class _Job:
    """What the scoring thread needs to know about the source a clip comes from."""

    src: Source
    info: VideoProbe
    sha: Future
    clock: StreamClock
    out_fps: float
    out_size: tuple[int, int]  # as written (upright, square pixels)
    coded_out: tuple[int, int]  # the decoded frames' size to scale to before turning them upright


@dataclass
class _Candidate:
    """One candidate clip as the decode pass hands it to the scoring thread."""

    segment: Segment
    times: np.ndarray  # presentation time (s) of each frame start..end, plus the end of the last one
    numbers: np.ndarray  # PySceneDetect's frame number for the same instants
    luma: np.ndarray  # mean luma of each frame
    idx: np.ndarray  # decode indices of the analysis frames
    rgb: np.ndarray  # the analysis frames, upright, [T, h, w, 3]
    frames: list | None  # every decoded frame start..end, or None when the clip cannot be kept
    held_bytes: int = 0  # of those frames, counted against the worker's memory budget


def _geometry(info: VideoProbe, sar: Fraction, cfg) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(out_size upright, coded_out, analysis size in decoded orientation), all in square pixels: a source with
    non-square pixels (sample aspect ratio `sar`) is resampled to its display width."""
    cw, ch = info.coded_width, info.coded_height
    dw = max(2, int(round(cw * float(sar))))  # display width of a decoded frame
    upright = (ch, dw) if info.rotation in (90, 270) else (dw, ch)
    ow, oh = detect_size(*upright, cfg.max_side)
    coded_out = (oh, ow) if info.rotation in (90, 270) else (ow, oh)
    aw, ah = detect_size(dw, ch, cfg.analysis_side, multiple=4)
    if min(aw, ah) < MIN_FLOW_SIDE:  # a very elongated frame: the flow needs a short side this long
        aw, ah = max(aw, MIN_FLOW_SIDE), max(ah, MIN_FLOW_SIDE)
    return (ow, oh), coded_out, (aw, ah)


def _sample_aspect_ratio(stream) -> Fraction:
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    return Fraction(sar.numerator, sar.denominator) if sar and sar.numerator > 0 and sar.denominator > 0 else Fraction(1)


class _HeldBytes:
    """Bytes of full-size frames held by the decode pass and by the clips in flight (two threads; a frame held
    by both counts twice, so the budget errs on the safe side)."""

    def __init__(self):
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


class SourceCurator:
    """Runs one source through every stage; `progress(frames, clips)` is called as work advances."""

    def __init__(self, cfg, models: Models, src_root: Path, progress: Callable[[int, int], None] | None = None):
        self.cfg = cfg
        self.models = models
        self.src_root = Path(src_root)
        self.progress = progress or (lambda frames, clips: None)
        self.curator = {"name": "realaction", "version": __version__, "config_hash": config_hash(cfg)}
        self._scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="score")
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self._in_flight: deque[Future] = deque()
        self._held = _HeldBytes()

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
            return SourceResult({**base, "status": "error", "reason": _reason(e)})
        result.row["seconds"] = round(time.perf_counter() - t0, 3)
        return result

    # -- the single pass (this thread) -------------------------------------------------------------------

    def _curate(self, src: Source, info: VideoProbe, sha: Future, base: dict) -> SourceResult:
        import av

        cfg = self.cfg
        row = {**base, "status": "done", "probe": info.to_dict(), "config_hash": self.curator["config_hash"]}
        clips: list[Future] = []

        if min(info.width, info.height) < cfg.min_short_side:
            # Nothing here can pass: one whole-video candidate, no decoding.
            done: Future = Future()
            job = _Job(src, info, sha, None, info.fps, (info.width, info.height), (info.coded_width, info.coded_height))
            done.set_result(ClipResult(self._row(job, 0, Segment(0, info.num_frames, 0), 0.0, info.duration,
                                                 (0, info.num_frames), {"short_side": float(min(info.width, info.height))},
                                                 ["low-resolution"])))
            self.progress(0, 1)
            row.update(cuts=[], cuts_pts=[], frames_decoded=0, source_sha256=sha.result())
            return SourceResult(row, [done])

        with av.open(str(src.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = DECODE_THREADING
            clock = StreamClock.of(stream, info.fps)
            sar = _sample_aspect_ratio(stream)
            out_size, coded_out, ana_size = _geometry(info, sar, cfg)
            job = _Job(src, info, sha, clock, float(cfg.fps) if cfg.fps else clock.nominal_fps, out_size, coded_out)
            cuts = build_cut_detector(cfg.detector, cfg.threshold, clock, info.rotation)
            seg = Segmenter(cfg.min_seconds, cfg.max_seconds, cfg.cut_margin, cuts.latency,
                            eps=float(clock.time_base) + 1e-9)
            buffer: deque = deque()  # (index, frame, held bytes) from the first frame a clip may still use
            analysis: dict[int, np.ndarray] = {}  # index -> RGB frame at analysis size, upright
            pts = array("q")  # every frame's timestamp, made increasing
            luma = array("d")
            next_sample = -np.inf
            sample_step = 1.0 / cfg.analysis_fps
            n = decode_errors = corrupt_frames = 0
            gap = False
            warning = first_error = None
            last_duration = None
            raw_bytes = None

            def emit(s: Segment) -> None:
                end_pts = pts[s.end] if s.end < len(pts) else pts[-1] + (last_duration or clock.frame_ticks)
                t = np.array([clock.seconds(p) for p in pts[s.start:s.end]] + [clock.seconds(end_pts)])
                numbers = np.array([clock.frame_number(p) for p in (*pts[s.start:s.end], end_pts)])
                idx = sorted(i for i in analysis if s.start <= i < s.end)
                rgb = np.stack([analysis[i] for i in idx]) if idx else np.zeros((0, 2, 2, 3), np.uint8)
                frames, held = None, 0
                if not (s.too_short or s.corrupt):
                    chosen = [(f, b) for i, f, b in buffer if s.start <= i < s.end]
                    frames, held = [f for f, _ in chosen], sum(b for _, b in chosen)
                    self._held.add(held)
                while len(self._in_flight) >= MAX_CLIPS_IN_FLIGHT:  # bounds the decoded frames held in memory
                    self._in_flight.popleft().exception()
                cand = _Candidate(s, t, numbers, np.asarray(luma[s.start:s.end]), np.asarray(idx, dtype=np.int64),
                                  rgb, frames, held)
                fut = self._scorer.submit(self._judge, job, len(clips), cand)
                self._in_flight.append(fut)
                clips.append(fut)

            try:
                with Prefetch(decode_packets(container, stream)) as decoded:
                    while True:
                        try:
                            frame = next(decoded)
                        except StopIteration:
                            break
                        except av.error.FFmpegError as e:  # truncated or damaged container: keep what decoded
                            warning = f"decoding stopped at frame {n}: {_reason(e)}"
                            break
                        if isinstance(frame, DecodeError):
                            decode_errors += 1
                            first_error = first_error or frame.reason
                            gap = n > 0
                            continue
                        i = n
                        n += 1
                        p = frame.pts
                        if p is None or (pts and p <= pts[-1]):  # missing or out of order: one nominal frame on
                            p = pts[-1] + clock.frame_ticks if pts else 0
                        pts.append(p)
                        t = clock.seconds(p)
                        last_duration = frame.duration or None
                        corrupt = bool(frame.is_corrupt)
                        corrupt_frames += corrupt
                        new_cuts = cuts.feed(i, frame, p)
                        luma.append(frame_luma(frame))
                        if t >= next_sample - 1e-4:
                            next_sample = max(next_sample + sample_step, t + sample_step / 2)
                            analysis[i] = rotate(small_rgb(frame, *ana_size), info.rotation)
                        if raw_bytes is None:
                            raw_bytes = sum(pl.buffer_size for pl in frame.planes)
                        if self._held.value + raw_bytes > HELD_FRAMES_BUDGET:  # hold it at the output size instead
                            buffer.append((i, resize_frame(frame, *coded_out), 0))
                        else:
                            buffer.append((i, frame, raw_bytes))
                            self._held.add(raw_bytes)
                        for s in seg.push(i, t, new_cuts, cuts.hold_from, unusable=corrupt, gap_before=gap):
                            emit(s)
                        gap = False
                        keep_from = seg.keep_from
                        if buffer[0][0] < keep_from:
                            while buffer and buffer[0][0] < keep_from:
                                self._held.add(-buffer.popleft()[2])
                            for j in [j for j in analysis if j < keep_from]:
                                del analysis[j]
                        if n % 32 == 0:
                            self.progress(32, 0)
                if n == 0:
                    raise ProbeError("no decodable frames")
                end_pts = pts[-1] + (last_duration or clock.frame_ticks)
                for s in seg.finish(n, clock.seconds(end_pts), cuts.finish()):
                    emit(s)
            finally:
                self._held.add(-sum(b for _, _, b in buffer))
                buffer.clear()
        self.progress(n % 32, 0)
        if warning is None and info.frames_listed and info.num_frames > 1.1 * n + 2:
            warning = f"decoded {n} of the {info.num_frames} frames the container lists (truncated?)"
        order = sorted(range(len(cuts.cuts)), key=lambda k: cuts.cuts[k])
        row.update(cuts=[cuts.cuts[k] for k in order], cuts_pts=[cuts.cut_numbers[k] for k in order],
                   frames_decoded=n, decode_errors=decode_errors, corrupt_frames=corrupt_frames,
                   start_s=round(clock.seconds(pts[0]), 4), source_sha256=sha.result())
        if sar != 1:
            row["sample_aspect_ratio"] = f"{sar.numerator}:{sar.denominator}"
        if decode_errors or corrupt_frames:
            row["warning"] = (f"{decode_errors} packets failed to decode ({first_error or 'none'}) and {corrupt_frames} "
                              "frames are corrupt; no kept clip contains them" + (f"; {warning}" if warning else ""))
        elif warning:
            row["warning"] = warning
        return SourceResult(row, clips)

    # -- one candidate clip (the scoring thread) -----------------------------------------------------------

    def _judge(self, job: _Job, clip_index: int, c: _Candidate) -> ClipResult:
        try:
            return self._judge_candidate(job, clip_index, c)
        finally:
            self._held.add(-c.held_bytes)
            c.frames = None

    def _judge_candidate(self, job: _Job, clip_index: int, c: _Candidate) -> ClipResult:
        cfg, s = self.cfg, c.segment
        if s.corrupt:
            row = self._row(job, clip_index, s, c.times[0], c.times[-1], (c.numbers[0], c.numbers[-1]),
                            {"corrupt_frames": float(s.length)}, ["corrupt"])
            self.progress(0, 1)
            return ClipResult(row)
        lead, trail = fade_trim(c.luma)
        a, b = lead, s.length - trail  # the clip after trimming, relative to s.start
        keep = (c.idx >= s.start + a) & (c.idx < s.start + b)
        idx, rgb = c.idx[keep], c.rgb[keep]
        gray = to_gray(rgb)
        scores = {**quality_scores(gray), **motion_scores(gray, c.times[idx - s.start] if len(idx) else idx)}
        scores["fade"] = float((lead + trail) / s.length)
        reasons = []
        if b <= a:
            reasons.append("black")
        elif s.too_short or c.times[b] - c.times[a] < cfg.min_seconds - 1e-6:
            reasons.append("too-short")
        reasons += [r for r in quality_reasons(scores, cfg) + motion_reasons(scores, cfg) if r not in reasons]
        reasons = _non_finite(scores) + reasons  # a NaN compares false with every threshold: it must never pass
        hashes, moving = [], []
        if not reasons:  # the model filters cost more than the rest together: only for clips still in the running
            verdict = self.models.filters.judge(rgb)
            scores.update(verdict.scores)
            reasons += _non_finite(verdict.scores) + verdict.reasons
            hashes, moving = verdict.hashes, verdict.motion_hashes
        if b <= a:  # black throughout: the row keeps the candidate's range
            a, b = 0, s.length
        trimmed = Segment(s.start + a, s.start + b, s.scene, s.too_short)
        start_s, end_s = float(c.times[a]), float(c.times[b])
        caption = caption_error = None
        if not reasons:
            from realaction.captioners import CaptionRequest

            caption = self.models.captioner.caption(CaptionRequest(
                source=job.src.path, src_root=self.src_root, clip_index=clip_index,
                start_s=start_s, end_s=end_s, frames=rgb))
            caption_error = caption.error if caption is not None else None
            if caption is None or not caption.text.strip():
                reasons.append("no-caption")
                caption = None
        row = self._row(job, clip_index, trimmed, start_s, end_s, (c.numbers[a], c.numbers[b]), scores, reasons)
        if caption_error:
            row["caption_error"] = caption_error
        if lead or trail:
            row["trimmed"] = [lead, trail]
        if hashes and not reasons:
            row["phash"] = hashes  # the driver's near-duplicate check (realaction.dedup)
            if moving:
                row["mhash"] = moving
        self.progress(0, 1)
        if reasons:
            return ClipResult(row)
        frames = [c.frames[k - s.start] for k in self._output_indices(c.times, a, b, job.out_fps, s.start)]
        return ClipResult(row, self._sample(job, trimmed, row, frames, caption))

    @staticmethod
    def _output_indices(times: np.ndarray, a: int, b: int, fps: float, offset: int) -> list[int]:
        """Re-timing to constant frame rate: output frame j shows the source frame on screen at the middle of its
        slot. `times` are the candidate's frame times (plus its end); the clip is frames [a, b) of it."""
        start, end = float(times[a]), float(times[b])
        n_out = max(1, int(round((end - start) * fps)))
        starts = times[a:b]
        return [offset + a + max(0, bisect_right(starts, start + (j + 0.5) / fps) - 1) for j in range(n_out)]

    def _row(self, job: _Job, clip_index: int, s: Segment, start_s: float, end_s: float, numbers: tuple,
             scores: dict, reasons: list[str]) -> dict:
        return {
            "key": f"{job.src.source_id}-{clip_index:04d}", "source": job.src.rel, "source_id": job.src.source_id,
            "clip_index": clip_index, "scene": s.scene, "start_frame": s.start, "end_frame": s.end,
            "start_frame_pts": int(numbers[0]), "end_frame_pts": int(numbers[1]),
            "start_s": round(float(start_s), 4), "end_s": round(float(end_s), 4),
            "kept": not reasons, "reason": reasons[0] if reasons else None, "reasons": reasons,
            "scores": {k: round(v, 4) if math.isfinite(v) else None for k, v in scores.items()},  # JSON has no NaN
        }

    def _sample(self, job: _Job, s: Segment, row: dict, frames: list, caption) -> dict:
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
            "scores": row["scores"], "caption_source": caption.source, "curator": self.curator,
            "clip_index": row["clip_index"], "scene": s.scene, "source_fps": job.clock.nominal_fps,
        }
        return {
            "__key__": row["key"], "mp4": mp4, "txt": text.encode("utf-8"),
            "jpg": _jpeg(first), "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
        }
