"""The model-based clip filters, run only on clips that passed the cheap ones (quality, motion), cheapest first.

1. text overlay (`--max-text-area`, rapidocr's detection model on 3 frames; score `text_area`, reason `text`);
2. person detector (`--min-person` with `--person-detector` or `--person-model`, 3 frames; score `person`);
3. CLIP person score (`--min-clip-person`, needs `--clip-checkpoint`; score `clip_person`).
Each filter that runs records its score; once one rejects, the costlier ones after it are not run. A clip that
passes them all gets the perceptual hashes the near-duplicate check in the driver needs (`realaction.filters.dedup`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from realaction.filters.dedup import clip_hashes, motion_hashes
from realaction.options import FilterOptions

if TYPE_CHECKING:
    from realbase.clip_model import ClipModel

MODEL_FRAMES = 3  # frames per clip each model looks at: a model pass costs more than decoding the clip


@dataclass
class Verdict:
    scores: dict[str, float] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)  # for the near-duplicate check; only when nothing rejected
    motion_hashes: list[str] = field(default_factory=list)  # the same frames' moving content (realaction.filters.dedup)


class ModelFilters:
    """Built once per worker process (each detector loads its model here)."""

    def __init__(self, cfg: FilterOptions, clip: ClipModel | None = None):
        self.cfg = cfg
        self.text = None
        self.person = None
        self.clip = clip  # given a checkpoint, the CLIP person score is recorded even when it rejects nothing
        self.dedup = bool(cfg.dedup)
        if cfg.max_text_area < 1:
            from realaction.filters.text_overlay import TextAreaDetector

            self.text = TextAreaDetector(side=cfg.text_side, max_frames=MODEL_FRAMES)
        if cfg.person_model is not None:  # recorded for every clip it sees; --min-person rejects
            from realaction.filters.onnx_person import OnnxPersonDetector

            self.person = OnnxPersonDetector(cfg.person_model, cfg.person_confidence, max_frames=MODEL_FRAMES)
        elif cfg.person_detector != "none" and cfg.min_person > 0:  # a disabled filter costs nothing
            from realaction.filters.people import PersonDetector

            self.person = PersonDetector(cfg.person_detector, max_frames=MODEL_FRAMES)

    def judge(self, rgb: np.ndarray) -> Verdict:
        """Scores, reasons and (for a clip nothing rejected) hashes from a clip's analysis frames [T, H, W, 3]."""
        cfg, v = self.cfg, Verdict()
        if self.text is not None:
            v.scores["text_area"] = float(self.text.score(rgb))
            if v.scores["text_area"] > cfg.max_text_area:
                v.reasons.append("text")
        if not v.reasons and self.person is not None:
            v.scores["person"] = float(self.person.score(rgb))
            if v.scores["person"] < cfg.min_person:
                v.reasons.append("no-person")
        if not v.reasons and self.clip is not None:
            v.scores["clip_person"] = float(self.clip.person_score(rgb))
            if v.scores["clip_person"] < cfg.min_clip_person:
                v.reasons.append("no-person")
        if not v.reasons and self.dedup:
            v.hashes = clip_hashes(rgb)
            v.motion_hashes = motion_hashes(rgb)
        return v
