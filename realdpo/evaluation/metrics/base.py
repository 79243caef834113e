"""The interface every `realdpo eval` metric implements, and what it is given.

A metric fills one or more report columns. `evaluate` calls, in the list's order: `prepare` (load a model, or say why
the metric is skipped), `job_options` (what the worker processes extract from each decoded video for it), `score`
(each worker result, in the main process), `aggregate` (a method's videos into its columns), `rows` (table rows of
its own) and `describe` (its entry in report.json's settings)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from realdpo.evaluation.scoring import Column  # (beside FrameScorer, the plug-in that names its columns)

if TYPE_CHECKING:
    from pathlib import Path

    from rich.console import Console

    from realdpo.configs.eval import EvalConfig
    from realdpo.evaluation.scoring import Job, Result

__all__ = ["Column", "Context", "Metric", "mean"]


@dataclass(frozen=True)
class Context:
    """What a metric may use: the options, the console, and the videos being scored."""

    cfg: EvalConfig
    console: Console
    videos: dict[str, list[Path]]  # method -> its video files
    prompts: dict[str, list[str | None]]  # method -> each video's prompt
    real: list  # the --real clips (`videos.expand_real`)


def mean(values: Iterable[Any]) -> float | None:
    """The mean of the values that are not None or NaN (None when none is left)."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


class Metric:
    """One metric of `realdpo eval`. Subclasses set `columns` (and `per_video` for the columns that are means over
    videos) and override the steps they need; the defaults do nothing, and `aggregate` averages `per_video`."""

    columns: dict[str, bool] = {}  # report column -> higher is better, in the table's order
    per_video: dict[str, Column] = {}  # the columns that are means over videos

    def prepare(self, ctx: Context) -> str | None:
        """Load what the metric needs before any video is scored; returns why it is skipped, or None to run it."""
        return None

    def job_options(self) -> dict[str, Any]:
        """`scoring.Job` fields the worker needs to extract this metric's inputs from each video."""
        return {}

    def reference_jobs(self) -> list[Job]:
        """Jobs for clips that are not a method's videos (method ""), e.g. FVD's real clips."""
        return []

    def score(self, result: Result) -> None:
        """Score one worker result in the main process (adding to `result.scores`, or keeping what it needs)."""

    def aggregate(self, method: str, results: list[Result]) -> dict[str, float] | str:
        """A method's columns over its scored videos, or why it has none (added to the skipped reasons)."""
        out = {}
        for column, c in self.per_video.items():
            value = mean(r.scores.get(c.key) for r in results)
            if value is not None:
                out[column] = c.scale * value
        return out

    def rows(self) -> dict[str, dict]:
        """Rows of the report's methods that are not a --videos method (or join one), e.g. pref_accuracy's."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The metric's entries in report.json's settings: what it measures, with which model and options."""
        return {}
