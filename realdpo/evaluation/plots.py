"""report/metrics.png (a bar chart per metric) and report/<name>_strip.png (frames of a few videos)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def metrics_chart(report: dict, path: Path, directions: dict[str, bool]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["methods"])
    metrics = [k for k in directions if any(k in m for m in report["methods"].values())]
    n = max(1, len(metrics))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics):
        vals = [np.nan if report["methods"][m].get(metric) is None else report["methods"][m][metric] for m in names]
        bars = ax.bar(range(len(names)), vals, color=[colors[i % len(colors)] for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(f"{metric} ({'higher' if directions[metric] else 'lower'} is better)", fontsize=9)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    if not metrics:
        axes[0][0].text(0.5, 0.5, "no metric computed", ha="center")
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
