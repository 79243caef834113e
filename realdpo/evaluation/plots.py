"""report/metrics.png (each metric's mean per method with its 95 % interval), report/differences.png (paired
differences against the first method) and report/<name>_strip.png (frames of a few videos).

The value axes are fitted to the values and their intervals, not started at 0, so that 92.27 against 92.29 can be
read; values are drawn as points with interval bars for that reason (a bar whose base is not 0 misleads).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def _fit(ax, lows: list[float], highs: list[float], zero: bool = False) -> None:
    """The value axis around the values and intervals (and 0 when `zero`), with a margin."""
    vals = [v for v in lows + highs + ([0.0] if zero else []) if v is not None and np.isfinite(v)]
    if not vals:
        return
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.15 or max(abs(hi) * 0.01, 1e-3)
    ax.set_ylim(lo - pad, hi + pad)


def metrics_chart(report: dict, path: Path, directions: dict[str, bool]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["methods"])
    metrics = [k for k in directions if any(k in m for m in report["methods"].values())]
    intervals = report.get("intervals", {})
    n = max(1, len(metrics))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics):
        lows, highs = [], []
        for i, m in enumerate(names):
            v = report["methods"][m].get(metric)
            if v is None:
                continue
            lo, hi = intervals.get(m, {}).get(metric, (v, v))
            lo, hi = v if lo is None else lo, v if hi is None else hi  # one prompt: no interval
            ax.errorbar([i], [v], yerr=[[v - lo], [hi - v]], fmt="o", color=colors[i % len(colors)], capsize=4)
            ax.annotate(f"{v:.2f}", (i, v), textcoords="offset points", xytext=(6, 0), fontsize=7, va="center")
            lows.append(lo)
            highs.append(hi)
        _fit(ax, lows, highs)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(f"{metric} ({'higher' if directions[metric] else 'lower'} is better)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    if not metrics:
        axes[0][0].text(0.5, 0.5, "no metric computed", ha="center")
    fig.suptitle("mean and 95 % bootstrap interval over prompts", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def differences_chart(report: dict, path: Path, directions: dict[str, bool]) -> None:
    """One panel per metric: each method minus the first, on the same videos, with its 95 % interval and the 0 line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["differences"]
    metrics = [k for k in directions if any(k in r["metrics"] for r in rows)]
    n = max(1, len(metrics))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        lows, highs = [], []
        labels = []
        for i, row in enumerate(rows):
            labels.append(f"{row['b']} − {row['a']}")
            d = row["metrics"].get(metric)
            if d is None:
                continue
            lo, hi = (d["diff"] if x is None else x for x in d["interval"])
            better = (d["diff"] > 0) == directions[metric]
            excludes_zero = lo > 0 or hi < 0
            color = ("tab:green" if better else "tab:red") if excludes_zero else "tab:gray"
            ax.errorbar([i], [d["diff"]], yerr=[[d["diff"] - lo], [hi - d["diff"]]], fmt="o", color=color, capsize=4)
            ax.annotate(f"{d['diff']:+.2f}", (i, d["diff"]), textcoords="offset points", xytext=(6, 0), fontsize=7,
                        va="center")
            lows.append(lo)
            highs.append(hi)
        ax.axhline(0, color="black", lw=0.8)
        _fit(ax, lows, highs, zero=True)
        ax.set_xlim(-0.6, len(rows) - 0.4)
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
        ax.set_title(f"{metric} ({'higher' if directions[metric] else 'lower'} is better)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("paired difference on the same prompts and seeds, 95 % bootstrap interval", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_strip(strips: list[tuple[str, np.ndarray]], path: Path) -> None:
    """Rows of thumbnails (one row per video, RGB uint8), the file name written on each row."""
    width = max(s.shape[1] for _, s in strips)
    rows = []
    for name, s in strips:
        row = np.zeros((s.shape[0], width, 3), np.uint8)
        row[:, : s.shape[1]] = s
        cv2.putText(row, name, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.putText(row, name, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        rows.append(row)
        rows.append(np.full((2, width, 3), 255, np.uint8))
    img = np.concatenate(rows[:-1], axis=0)
    if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
