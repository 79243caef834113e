"""The terminal table: methods as rows, metrics as columns, the best value of each column highlighted."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def best_per_metric(report: dict, directions: dict[str, bool]) -> dict[str, float]:
    best = {}
    for metric, higher in directions.items():
        vals = [m[metric] for m in report["methods"].values() if m.get(metric) is not None]
        if len(vals) > 0:
            best[metric] = max(vals) if higher else min(vals)
    return best


def print_table(console: Console, report: dict, directions: dict[str, bool]) -> None:
    present = [k for k in directions if any(k in m for m in report["methods"].values())]
    best = best_per_metric(report, directions)
    table = Table(title="realdpo eval", header_style="bold")
    table.add_column("method")
    for k in present:
        table.add_column(f"{k} {'↑' if directions[k] else '↓'}", justify="right")
    table.add_column("videos", justify="right")
    multi = len(report["methods"]) > 1
    for name, m in report["methods"].items():
        cells = []
        for k in present:
            v = m.get(k)
            if v is None:
                cells.append("—")
            else:
                text = f"{v:.2f}"
                cells.append(f"[bold green]{text}[/]" if multi and v == best.get(k) else text)
        table.add_row(name, *cells, str(m.get("n_videos", 0)))
    console.print(table)
    for metric, why in report["settings"].get("skipped", {}).items():
        console.print(f"[yellow]skipped {metric}[/]: {why}")
    for err in report["settings"].get("errors", [])[:10]:
        console.print(f"[red]not scored[/]: {err}")
