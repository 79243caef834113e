"""A consumer's per-video score plugged into the evaluation (`scoring.FrameScorer`; the motion lab's tracker for
`realdpo eval --lab`): scored in the workers on the decoded frames, its columns the means its `columns` name."""

from __future__ import annotations

from realdpo.evaluation.metrics.base import Metric
from realdpo.evaluation.scoring import FrameScorer


class ScorerMetric(Metric):
    def __init__(self, scorer: FrameScorer):
        self.scorer = scorer
        self.per_video = dict(scorer.columns)
        self.columns = {name: c.higher_is_better for name, c in self.per_video.items()}

    def job_options(self) -> dict:
        return {"scorer": self.scorer}

    def describe(self) -> dict:
        return {self.scorer.name: self.scorer.settings}
