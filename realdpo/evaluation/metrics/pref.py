"""pref_accuracy and pref_margin: how often the trained policy prefers held-out real clips to their cached negatives
(`evaluation.pref_accuracy`); computed from --pairs, not from the videos, and reported in a row of its own
(--pref-name)."""

from __future__ import annotations

from realdpo.evaluation.metrics.base import Context, Metric


class PrefMetric(Metric):
    columns = {"pref_accuracy": True, "pref_margin": True}

    def __init__(self) -> None:
        self.result: dict | None = None

    def prepare(self, ctx: Context) -> str | None:
        self.cfg = ctx.cfg
        if not ctx.cfg.pairs:
            return "no --pairs given"
        from realdpo.evaluation.pref_accuracy import preference_accuracy

        # before the videos: a bad --lora or --model fails before the long part
        self.result = preference_accuracy(ctx.cfg, ctx.console)
        return self.result.get("skipped")

    def rows(self) -> dict[str, dict]:
        return {self.cfg.pref_name: self.result["metrics"]} if self.result and self.result["metrics"] else {}

    def describe(self) -> dict:
        if self.result is None:
            return {}
        return {"pref_accuracy": {"row": self.cfg.pref_name, **self.result["settings"],
                                  "definition": "percentage of (real clip, cached negative) pairs whose "
                                  "policy-vs-reference error difference d_k < 0, a tie counting one half; "
                                  "pref_margin is mean -(beta/2) d_k; errors averaged over fixed timesteps and noise"}}
