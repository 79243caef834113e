"""The training plot: loss, implicit reward margin and preference accuracy per optimizer step."""

from __future__ import annotations

from pathlib import Path

from realaction.shards import read_jsonl

PANELS = (("loss", "loss"), ("reward_margin", "reward margin  -(β/2)·d"), ("accuracy", "preference accuracy"))


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def plot_metrics(metrics: Path, out: Path, title: str = "RealDPO training") -> Path:
    """Write a PNG of the metrics.jsonl rows (raw values faint, a moving average on top)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(Path(metrics))
    panels = [(k, label) for k, label in PANELS if any(k in r for r in rows)] or [("loss", "loss")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    window = max(1, len(rows) // 20)
    for ax, (key, label) in zip(axes[0], panels):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            steps, vals = zip(*pts)
            ax.plot(steps, vals, color="tab:blue", alpha=0.3, lw=1)
            ax.plot(steps, _smooth(list(vals), window), color="tab:blue", lw=2)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
