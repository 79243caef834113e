"""Curate one source video in a single decode pass: detect cuts, cut clips, score, caption and encode them.

Decoded frames stay as `av.VideoFrame`s (YUV, no RGB copy) in a short buffer that holds only the clip being
built; scene detection sees each frame downscaled once, the filters see it at analysis size when it falls on the
`--analysis-fps` grid, and a kept clip is encoded straight from the buffered frames. Memory stays bounded by
a few clips (`--max-seconds`) whatever the video's length.

Two threads: this one decodes and detects cuts; a second one scores, captions and encodes each candidate clip
as soon as the cut detector releases it (OpenCV and x264 run outside the GIL, so the two overlap).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from realaction import __version__
from realaction.motion import motion_reasons, motion_scores
from realaction.probe import ProbeError, Source, VideoProbe, probe, sha256_file
from realaction.quality import quality_reasons, quality_scores, to_gray
from realaction.scenes import CutDetector, detect_size, small_bgr
from realaction.segments import Segment, Segmenter, clip_lengths
from realaction.video_io import encode_video_frames

DECODE_THREADING = "AUTO"  # FFmpeg frame + slice threads
MAX_CLIPS_IN_FLIGHT = 3  # candidate clips queued for the scoring/encoding thread (each holds its frames)


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
            from realaction.clip_model import ClipModel

            self.clip = ClipModel.load(cfg.clip_arch, Path(cfg.clip_checkpoint))
        from realaction.captioners import build_captioner
        from realaction.filters import ModelFilters

        self.filters = ModelFilters(cfg, self.clip)
        self.captioner = build_captioner(cfg, self.clip)


def _rotate(img: np.ndarray, rotation: int) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(img, k=rotation // 90)) if rotation else img


def _jpeg(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


@dataclass
class _Job:
    """What the scoring thread needs to know about the source a clip comes from."""

    src: Source
    info: VideoProbe
    sha: Future
    out_fps: float
    out_size: tuple[int, int]  # as written (upright)
    coded_out: tuple[int, int]  # the decoded frames' size to scale to before turning them upright


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
        fps = info.fps
        ow, oh = detect_size(info.width, info.height, cfg.max_side)
        job = _Job(src, info, sha, float(cfg.fps) if cfg.fps else fps, (ow, oh),
                   (oh, ow) if info.rotation in (90, 270) else (ow, oh))
        row = {**base, "status": "done", "probe": info.to_dict(), "config_hash": self.curator["config_hash"]}
        clips: list[Future] = []
        min_len, max_len = clip_lengths(fps, cfg.min_seconds, cfg.max_seconds)

        if min(info.width, info.height) < cfg.min_short_side:
            # Nothing here can pass: one whole-video candidate, no decoding.
            done: Future = Future()
            done.set_result(ClipResult(self._row(job, 0, Segment(0, info.num_frames, 0),
                                                 {"short_side": float(min(info.width, info.height))}, ["low-resolution"])))
            self.progress(0, 1)
            row.update(cuts=[], frames_decoded=0, source_sha256=sha.result())
            return SourceResult(row, [done])

        det_size = detect_size(info.coded_width, info.coded_height, cfg.detect_side, multiple=4)
        ana_size = detect_size(info.coded_width, info.coded_height, cfg.analysis_side, multiple=4)
        cuts = CutDetector(cfg.detector, cfg.threshold, fps)
        seg = Segmenter(min_len, max_len, cfg.cut_margin, cuts.latency)
        buffer: deque = deque()  # (index, av.VideoFrame) from the first frame a clip may still use
        analysis: dict[int, np.ndarray] = {}  # index -> RGB frame at analysis size, upright
        # Big frames are held at a smaller size (the buffer spans a whole clip), but never below what the
        # detector and the filters look at: scores must not depend on --max-side.
        hw, hh = detect_size(info.coded_width, info.coded_height, max(cfg.max_side, cfg.analysis_side, cfg.detect_side))
        shrink = (hw, hh) if info.coded_width * info.coded_height > 2 * hw * hh else None
        step = fps / cfg.analysis_fps  # source frames between analysis samples
        next_sample = 0.0
        n = 0
        warning = None

        def emit(s: Segment) -> None:
            idx = sorted(i for i in analysis if s.start <= i < s.end)
            rgb = np.stack([analysis[i] for i in idx]) if idx else np.zeros((0, 2, 2, 3), np.uint8)
            frames = None
            if not s.too_short:
                held = dict(buffer)
                frames = [held[i] for i in self._output_indices(job, s)]
            while len(self._in_flight) >= MAX_CLIPS_IN_FLIGHT:  # bounds the decoded frames held in memory
                self._in_flight.popleft().exception()
            fut = self._scorer.submit(self._judge, job, len(clips), s, np.asarray(idx), rgb, frames)
            self._in_flight.append(fut)
            clips.append(fut)

        with av.open(str(src.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = DECODE_THREADING
            decoded = container.decode(stream)
            while True:
                try:
                    frame = next(decoded)
                except StopIteration:
                    break
                except av.error.FFmpegError as e:  # truncated or damaged: keep what decoded
                    warning = f"decoding stopped at frame {n}: {_reason(e)}"
                    break
                i = n
                n += 1
                if shrink:
                    frame = frame.reformat(width=shrink[0], height=shrink[1], format="yuv420p")
                small = small_bgr(frame, *det_size)
                new_cuts = cuts.feed(i, small)
                if i >= next_sample - 1e-6:
                    next_sample += step
                    rgb = small[:, :, ::-1] if ana_size == det_size else small_bgr(frame, *ana_size)[:, :, ::-1]
                    analysis[i] = _rotate(rgb, info.rotation)
                buffer.append((i, frame))
                for s in seg.push(i, new_cuts, cuts.hold_from):
                    emit(s)
                keep_from = seg.keep_from
                if buffer[0][0] < keep_from:
                    while buffer and buffer[0][0] < keep_from:
                        buffer.popleft()
                    for j in [j for j in analysis if j < keep_from]:
                        del analysis[j]
                if n % 32 == 0:
                    self.progress(32, 0)
        if n == 0:
            raise ProbeError("no decodable frames")
        for s in seg.finish(n, cuts.finish()):
            emit(s)
        buffer.clear()
        self.progress(n % 32, 0)
        if warning is None and info.frames_listed and info.num_frames > 1.1 * n + 2:
            warning = f"decoded {n} of the {info.num_frames} frames the container lists (truncated?)"
        row.update(cuts=sorted(cuts.cuts), frames_decoded=n, source_sha256=sha.result())
        if warning:
            row["warning"] = warning
        return SourceResult(row, clips)

    @staticmethod
    def _output_indices(job: _Job, s: Segment) -> list[int]:
        fps = job.info.fps
        n_out = max(1, int(round(s.length * job.out_fps / fps)))
        return [min(s.end - 1, s.start + int(j * fps / job.out_fps + 1e-6)) for j in range(n_out)]

    # -- one candidate clip (the scoring thread) -----------------------------------------------------------

    def _judge(self, job: _Job, clip_index: int, s: Segment, idx: np.ndarray, rgb: np.ndarray,
               frames: list | None) -> ClipResult:
        cfg, fps = self.cfg, job.info.fps
        gray = to_gray(rgb)
        scores = {**quality_scores(gray), **motion_scores(gray, idx.astype(np.float64) / fps)}
        reasons = ["too-short"] if s.too_short else []
        reasons += quality_reasons(scores, cfg) + motion_reasons(scores, cfg)
        hashes = []
        if not reasons:  # the model filters cost more than the rest together: only for clips still in the running
            verdict = self.models.filters.judge(rgb)
            scores.update(verdict.scores)
            reasons += verdict.reasons
            hashes = verdict.hashes
        caption = None
        if not reasons:
            from realaction.captioners import CaptionRequest

            caption = self.models.captioner.caption(CaptionRequest(
                source=job.src.path, src_root=self.src_root, clip_index=clip_index,
                start_s=s.start / fps, end_s=s.end / fps, frames=rgb))
            if caption is None or not caption.text.strip():
                reasons.append("no-caption")
                caption = None
        row = self._row(job, clip_index, s, scores, reasons)
        if hashes and not reasons:
            row["phash"] = hashes  # the driver's near-duplicate check (realaction.dedup)
        self.progress(0, 1)
        if reasons:
            return ClipResult(row)
        return ClipResult(row, self._sample(job, s, row, frames, caption))

    def _row(self, job: _Job, clip_index: int, s: Segment, scores: dict, reasons: list[str]) -> dict:
        fps = job.info.fps
        return {
            "key": f"{job.src.source_id}-{clip_index:04d}", "source": job.src.rel, "source_id": job.src.source_id,
            "clip_index": clip_index, "scene": s.scene, "start_frame": s.start, "end_frame": s.end,
            "start_s": round(s.start / fps, 4), "end_s": round(s.end / fps, 4),
            "kept": not reasons, "reason": reasons[0] if reasons else None, "reasons": reasons,
            "scores": {k: round(v, 4) for k, v in scores.items()},
        }

    def _sample(self, job: _Job, s: Segment, row: dict, frames: list, caption) -> dict:
        rotation = job.info.rotation
        cw, ch = job.coded_out
        ow, oh = job.out_size
        if rotation:
            frames = [_rotate(f.reformat(width=cw, height=ch, format="rgb24").to_ndarray(), rotation) for f in frames]
            first = frames[0]
        else:
            first = frames[0].reformat(width=cw, height=ch, format="rgb24").to_ndarray()
        mp4 = encode_video_frames(frames, job.out_fps, ow, oh)
        text = caption.text.strip()
        row["caption_source"] = caption.source
        row["caption"] = text
        meta = {
            "source": job.src.rel, "source_sha256": job.sha.result(),
            "start_frame": s.start, "end_frame": s.end, "start_s": row["start_s"], "end_s": row["end_s"],
            "fps": job.out_fps, "width": ow, "height": oh, "num_frames": len(frames),
            "scores": row["scores"], "caption_source": caption.source, "curator": self.curator,
            "clip_index": row["clip_index"], "scene": s.scene, "source_fps": job.info.fps,
        }
        return {
            "__key__": row["key"], "mp4": mp4, "txt": text.encode("utf-8"),
            "jpg": _jpeg(first), "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
        }
