"""The small option sets each curation stage takes: views of `CurateConfig`'s fields (`cfg.decode`, `cfg.cuts`,
`cfg.filters`, `cfg.captions`, `cfg.output`, `cfg.engines`), so no stage sees options it does not use. The field
names and meanings are `CurateConfig`'s (see its help texts)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

DETECTORS = ("adaptive", "content", "threshold", "hash", "histogram", "transnetv2")
CAPTIONERS = ("sidecar", "clip", "vlm")
PERSON_DETECTORS = ("hog", "haar", "hog+haar", "none")
ENGINES = ("local", "ray")


def view(cls: type, cfg: Any) -> Any:
    """An options object of type `cls` holding `cfg`'s values of its fields."""
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class DecodeOptions:
    """The decode pass: output and analysis frame sizes and rates."""

    max_side: int
    fps: Optional[float]
    analysis_side: int
    analysis_fps: float
    min_short_side: int


@dataclass(frozen=True)
class CutOptions:
    """Scene-cut detection and the cutting of scenes into clips."""

    detector: str
    threshold: Optional[float]
    min_seconds: float
    max_seconds: float
    cut_margin: int


@dataclass(frozen=True)
class FilterOptions:
    """Every filter's threshold, the model filters' models, and the near-duplicate check."""

    min_brightness: float
    max_brightness: float
    min_sharpness: float
    max_black_fraction: float
    max_frozen_fraction: float
    min_motion: float
    max_camera_motion: float
    person_detector: str
    person_model: Optional[Path]
    person_confidence: float
    min_person: float
    max_text_area: float
    text_side: int
    dedup: bool
    dup_distance: int
    clip_checkpoint: Optional[Path]
    clip_arch: str
    min_clip_person: float


@dataclass(frozen=True)
class CaptionOptions:
    """The captioner and what it reads (`src`: sidecar captions sit beside the source videos)."""

    captioner: str
    src: Optional[Path]
    captions_csv: Optional[Path]
    action_vocab: Optional[Path]
    vlm_model: Optional[Path]
    vlm_prompt: str
    vlm_max_tokens: int
    clip_checkpoint: Optional[Path]
    clip_arch: str


@dataclass(frozen=True)
class OutputOptions:
    """Shards: their size and how often the open one is committed."""

    shard_max_count: int
    shard_max_mb: float
    commit_seconds: float


@dataclass(frozen=True)
class EngineOptions:
    """Where the per-source work runs."""

    engine: str
    workers: int
    ray_address: Optional[str]
