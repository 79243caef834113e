"""The health of a DPO run from its metrics rows: warnings that name a problem once, and the start/end summary.

Every rule looks at the mean of the last `window` optimizer steps (one step of B clips and K negatives is too noisy
to judge). The metrics are those of `realdpo.method.losses.pair_stats`; docs/health.md explains how to read them.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

# (metric, label, format) of the summary table, in order
SUMMARY = (("loss", "loss", "{:.4f}"), ("accuracy", "accuracy", "{:.2f}"), ("reward_margin", "reward margin", "{:+.3g}"),
           ("err_diff_w", "winners' err - ref", "{:+.3g}"), ("err_diff_l", "losers' err - ref", "{:+.3g}"),
           ("saturated", "saturated pairs", "{:.0%}"), ("grad_norm", "grad norm", "{:.3g}"),
           ("val_accuracy", "held-out accuracy", "{:.2f}"), ("val_err_diff_w", "held-out winners' err - ref", "{:+.3g}"))

STUCK_ACCURACY = 0.05  # accuracy within this of 0.5 ...
STUCK_MARGIN = 0.05  # ... and |mean margin| below this (the loss is within ~0.025 of log 2): nothing is learned
SATURATED_ACCURACY = 0.95  # accuracy at least this ...
SATURATED_SHARE = 0.5  # ... and at least this share of pairs saturated: the pairs no longer teach
DISPLACED_ACCURACY = 0.9  # winners' error above the reference's while the preference is this well learned


def window_for(steps: int) -> int:
    """Steps each rule averages over: a fifth of the run, at least 3 and at most 20."""
    return max(3, min(20, steps // 5))


def _mean(rows: list[dict], key: str) -> float | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return sum(vals) / len(vals) if vals else None


def _above_zero(rows: list[dict], key: str) -> bool:
    """The mean of `key` over rows is positive by more than twice its standard error."""
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if len(vals) < 3:
        return False
    mean = statistics.fmean(vals)
    return mean > 0 and mean > 2 * statistics.stdev(vals) / math.sqrt(len(vals))


class HealthMonitor:
    """Feed it each step's metrics row; it returns the warnings that row raises (each kind once per run)."""

    def __init__(self, steps: int, preference: bool = True):
        self.window = window_for(steps)
        self.preference = preference  # the DPO losses (SFT has no pairs to judge)
        self.rows: list[dict[str, Any]] = []
        self.raised: dict[str, str] = {}  # kind -> the message, in the order raised

    def preload(self, rows: list[dict[str, Any]]) -> None:
        """A resumed run's earlier rows: their warnings count as raised and are not repeated."""
        self.rows = list(rows)
        for r in rows:
            self.raised.update(r.get("warnings") or {})

    def observe(self, row: dict[str, Any]) -> dict[str, str]:
        self.rows.append(row)
        if not self.preference or len(self.rows) < self.window:
            return {}
        last, step, n = self.rows[-self.window:], row["step"], self.window
        acc, margin = _mean(last, "accuracy"), _mean(last, "reward_margin")
        new: dict[str, str] = {}
        if acc is None or margin is None:
            return new
        if abs(acc - 0.5) < STUCK_ACCURACY and abs(margin) < STUCK_MARGIN:
            ties = _mean(last, "ties") or 0.0
            why = ("every pair is a tie: the losers are identical to the winners" if ties > 0.99 else
                   "beta or the learning rate is too small to move the policy, or the losers are too close to the "
                   "winners")
            new["stuck"] = (f"step {step}: preference accuracy has stayed at 0.5 for {n} steps (mean margin "
                            f"{margin:+.2g}): {why}")
        saturated = _mean(last, "saturated") or 0.0
        if acc >= SATURATED_ACCURACY and saturated >= SATURATED_SHARE:
            new["saturated"] = (f"step {step}: the DPO loss saturated: accuracy {acc:.2f}, {saturated:.0%} of pairs "
                                f"saturated, mean margin {margin:.3g} over {n} steps: those pairs no longer teach "
                                "(lower beta or the learning rate, or stop earlier)")
        if acc >= DISPLACED_ACCURACY and _above_zero(last, "err_diff_w"):
            new["displacement"] = (f"step {step}: likelihood displacement: the real clips' error rose above the "
                                   f"reference's (winners {_mean(last, 'err_diff_w'):+.3g}, losers "
                                   f"{_mean(last, 'err_diff_l'):+.3g} over {n} steps): the preference is won by "
                                   "pushing both samples away (lower beta or the learning rate, or add --loss "
                                   "dpo+sft)")
        new = {k: v for k, v in new.items() if k not in self.raised}
        self.raised.update(new)
        return new

    def summary(self) -> list[str]:
        """The health figures over the first and the last window of steps, one line per metric."""
        if not self.rows:
            return []
        n = min(self.window, len(self.rows))
        first, last = self.rows[:n], self.rows[-n:]
        spans = [f"steps {rows[0]['step']}-{rows[-1]['step']}" for rows in (first, last)]
        lines = [f"{'health':<28}{spans[0]:>16}{spans[1]:>18}"]
        for key, label, fmt in SUMMARY:
            a, b = _mean(first, key), _mean(last, key)
            if a is None and b is None:
                continue
            cells = ["—" if v is None else fmt.format(v) for v in (a, b)]
            lines.append(f"{label:<28}{cells[0]:>16}{cells[1]:>18}")
        return lines


def non_finite(row: dict[str, Any], keys: tuple[str, ...] = ("loss", "grad_norm")) -> list[str]:
    """The keys among `keys` whose value in row is NaN or infinite."""
    return [k for k in keys if isinstance(row.get(k), float) and not math.isfinite(row[k])]


def strict(row: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinities become null, so the row is strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
