"""The training plot (OUT/training.png): the run's health per optimizer step (docs/health.md explains how to read it).

Panels: loss; preference accuracy and reward margin, each overall and per timestep bucket (q1 the least noisy
quarter of the trained timesteps) and per expert for two-expert models; the policy-minus-reference error of winners
and of losers; the share of saturated pairs; the gradient norm. Held-out pairs (`--val-pairs`) are drawn as dots,
and each health warning as a dashed red line at its step.
"""

from __future__ import annotations

import math
from pathlib import Path

from realbase.files import read_jsonl

GROUPS = ("q1", "q2", "q3", "q4", "expert_high", "expert_low")
# (title, [(key, label)], zero line)
PANELS = (
    ("loss", [("loss", "loss")], False),
    ("preference accuracy", [("accuracy", "all"), *((f"accuracy_{g}", g) for g in GROUPS), ("val_accuracy", "held-out")],
     False),
    ("reward margin  -(β/2)·d", [("reward_margin", "all"), *((f"reward_margin_{g}", g) for g in GROUPS),
                                 ("val_reward_margin", "held-out")], True),
    ("policy − reference error", [("err_diff_w", "winners (real)"), ("err_diff_l", "losers"),
                                  ("val_err_diff_w", "held-out winners"), ("val_err_diff_l", "held-out losers")], True),
    ("saturated pairs", [("saturated", "share")], False),
    ("gradient norm (before clipping)", [("grad_norm", "norm")], False),
)


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return (list(a) for a in zip(*pts)) if pts else ([], [])


def plot_metrics(metrics: Path, out: Path, title: str = "RealDPO training") -> Path:
    """Write a PNG of the metrics.jsonl rows (raw values faint, a moving average on top)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(Path(metrics))
    panels = [(t, [(k, lab) for k, lab in keys if any(k in r for r in rows)], zero) for t, keys, zero in PANELS]
    panels = [p for p in panels if p[1]] or [("loss", [("loss", "loss")], False)]
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.3 * nrows), squeeze=False)
    window = max(1, len(rows) // 20)
    warnings = [(r["step"], ", ".join(r["warnings"])) for r in rows if r.get("warnings")]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (label, keys, zero) in zip(axes.flat, panels):
        for i, (key, name) in enumerate(keys):
            steps, vals = _series(rows, key)
            if not steps:
                continue
            color = colors[i % len(colors)]
            if key.startswith("val_"):
                ax.plot(steps, vals, "o", color=color, ms=4, label=name)
                continue
            main = i == 0 or key.startswith("err_diff")
            if main:
                ax.plot(steps, vals, color=color, alpha=0.25, lw=1)
            ax.plot(steps, _smooth(vals, window), color=color, lw=2 if main else 1, label=name,
                    ls="-" if main else "--")
        if zero:
            ax.axhline(0, color="black", lw=0.8)
        for step, kind in warnings:
            ax.axvline(step, color="tab:red", ls=":", lw=1)
            ax.annotate(kind, (step, 0.98), xycoords=("data", "axes fraction"), fontsize=7, color="tab:red",
                        rotation=90, va="top", ha="right")
        if len(keys) > 1:
            ax.legend(fontsize=6, ncol=2)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
