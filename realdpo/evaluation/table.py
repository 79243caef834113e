"""The terminal report: metrics as rows and methods as columns (so the headers are the short method names and fit
80 columns), each value with its 95 % interval beneath, the best value of a row highlighted; then the paired
differences against the first method, and pref_accuracy of a --pairs row that has no videos as a line of its own."""

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


def _num(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 1e4 else f"{v:.4g}"


def print_table(console: Console, report: dict, directions: dict[str, bool]) -> None:
    methods = {name: m for name, m in report["methods"].items() if m.get("n_videos", 0) > 0}
    others = {name: m for name, m in report["methods"].items() if name not in methods}
    present = [k for k in directions if any(k in m for m in methods.values())]
    best = best_per_metric({"methods": methods}, directions)
    intervals = report.get("intervals", {})
    table = Table(title="realdpo eval (95 % interval beneath)", header_style="bold")
    table.add_column("metric", no_wrap=True)
    for name in methods:
        table.add_column(name, justify="right", overflow="fold")
    multi = len(methods) > 1
    for k in present:
        cells = []
        for name, m in methods.items():
            v = m.get(k)
            if v is None:
                cells.append("—")
                continue
            text = _num(v)
            text = f"[bold green]{text}[/]" if multi and v == best.get(k) else text
            ci = intervals.get(name, {}).get(k)
            known = ci is not None and None not in ci  # one prompt: no interval
            cells.append(text + (f"\n[dim]{_num(ci[0])}–{_num(ci[1])}[/]" if known else ""))
        table.add_row(f"{k} {'↑' if directions[k] else '↓'}", *cells)
    table.add_row("videos", *(str(m.get("n_videos", 0)) for m in methods.values()))
    console.print(table)
    for row in report.get("differences", []):
        diffs = [(k, row["metrics"][k]) for k in directions if k in row["metrics"]]
        if not diffs:
            continue
        t = Table(title=f"{row['b']} − {row['a']} on the same {row['n_pairs']} prompts and seeds", header_style="bold")
        t.add_column("metric", no_wrap=True)
        t.add_column("difference", justify="right")
        t.add_column("95 % interval", justify="right")
        for k, d in diffs:
            if None in d["interval"]:
                t.add_row(f"{k} {'↑' if directions[k] else '↓'}", f"{d['diff']:+.3g}", "one prompt: none")
                continue
            lo, hi = d["interval"]
            sure = lo > 0 or hi < 0
            better = (d["diff"] > 0) == directions[k]
            mark = ("[green]better[/]" if better else "[red]worse[/]") if sure else "[dim]no clear difference[/]"
            t.add_row(f"{k} {'↑' if directions[k] else '↓'}", f"{d['diff']:+.3g}",
                      f"{lo:+.3g} … {hi:+.3g}  {mark}")
        console.print(t)
    for name, m in others.items():
        if "pref_accuracy" in m:
            margin = f", margin {m['pref_margin']:+.3g}" if m.get("pref_margin") is not None else ""
            console.print(f"pref_accuracy of {name} on {m.get('n_pairs', '?')} held-out pairs: "
                          f"{m['pref_accuracy']:.1f} %{margin}", markup=False, highlight=False)
    for metric, why in report["settings"].get("skipped", {}).items():
        console.print(f"[yellow]skipped {metric}[/]: {why}")
    for err in report["settings"].get("errors", [])[:10]:
        console.print(f"[red]not scored[/]: {err}", soft_wrap=True)
