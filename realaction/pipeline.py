"""`realdpo curate`: run every source under --src through the single-pass curator, in parallel, resumably."""

from __future__ import annotations

import dataclasses
import errno
from collections import Counter
from pathlib import Path

from realaction.config import CurateConfig
from realaction.curator import Models, config_hash
from realaction.decoding.probe import Skipped, Source, discover
from realaction.engines.sources import run_sources, uses_pool
from realaction.filters.dedup import DuplicateIndex
from realaction.output.report import build_summary, record_config, write_card, write_summary
from realaction.output.shards import ShardCommitter, prepare_out
from realbase.errors import UserError
from realbase.files import append_jsonl, iter_jsonl
from realbase.text import printable

# -- the command ---------------------------------------------------------------------------------------------


def _config_dict(cfg: CurateConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}


def curate(cfg: CurateConfig) -> dict:
    """Curate `cfg.src` into `cfg.out`; returns the summary (also written to OUT/summary.json)."""
    cfg.validate()
    src, out = Path(cfg.src), Path(cfg.out)
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise UserError("--out must not be inside --src (its clips would be curated on the next run)")
    skipped: list[Skipped] = []
    sources = discover(src, skipped)
    if not sources:
        why = f"; skipped {len(skipped)}, e.g. {printable(skipped[0].rel)}: {printable(skipped[0].reason)}" if skipped else ""
        raise UserError(f"no videos under {printable(src)} (looked for .mp4, .mov, .mkv, .avi, .webm, .m4v, .mpg and similar{why})")
    # Models are built, and Ray reached, before any work so that a bad checkpoint, a missing dependency or a
    # wrong --ray-address fails in one line; worker processes build their own models.
    models = Models.of(cfg)
    if cfg.engine == "ray":
        from realaction.engines.ray_engine import ray_session

        with ray_session(cfg.engines):
            return _curate(cfg, sources, skipped, models)
    return _curate(cfg, sources, skipped, models)


def _curate(cfg: CurateConfig, sources: list[Source], skipped: list[Skipped], models: Models) -> dict:
    try:
        return _curate_into(cfg, sources, skipped, models)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # The commit protocol (realaction.output.shards) leaves OUT consistent at any write: a rerun resumes.
        raise UserError(f"out of disk space writing {printable(cfg.out)} ({e.strerror}): free some space and run the "
                        "same command again; it resumes after the sources already committed") from None


def _curate_into(cfg: CurateConfig, sources: list[Source], skipped: list[Skipped], models: Models) -> dict:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    src, out = Path(cfg.src), Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state = prepare_out(out)
    known_configs = record_config(out, config_hash(cfg), _config_dict(cfg))  # before any clip is made with them
    append_jsonl(out / "sources.jsonl", [{"source": k.rel, "status": "skipped", "reason": k.reason} for k in skipped])
    todo = [s for s in sources if s.rel not in state.done]
    if uses_pool(cfg, len(todo)):
        models = None  # free them here: every worker process loads its own
    console = Console(stderr=True)
    if state.non_finite:
        console.print(f"note: {printable(out / 'manifest.jsonl')} held {state.non_finite} bare NaN/Infinity value(s) (not JSON, "
                      "written by an older version): read as null and rewritten as valid JSON", markup=False)
    if state.done:
        console.print(f"resuming: {len(sources) - len(todo)} of {len(sources)} sources already done")
        if any(r.get("config_hash") != config_hash(cfg) for r in state.done.values()):
            console.print("[yellow]warning:[/yellow] some finished sources were curated with other options; "
                          "their clips stay as they are (use a new --out to redo them); DATA_CARD.md lists which "
                          "sources and clips came from which options")
    committer = ShardCommitter(out, state.next_shard, cfg.output)
    # Near-duplicates are judged here, as results are committed: one index over every kept clip of every
    # engine's workers, rebuilt on resume from the manifest rows of finished sources (realaction.filters.dedup).
    filters = cfg.filters
    duplicates = DuplicateIndex.from_manifest(iter_jsonl(out / "manifest.jsonl"), filters.dup_distance) if filters.dedup else None
    counts = Counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        t_src = progress.add_task("sources", total=len(todo), info="")
        t_frm = progress.add_task("frames ", total=None, info="")

        def on_progress(frames: int, clips: int) -> None:
            counts["frames"] += frames
            counts["clips"] += clips
            progress.update(t_frm, advance=frames, info=f"{counts['clips']} clips scored")

        results = run_sources(todo, cfg, models, on_progress)
        try:
            for result in results:
                if duplicates is not None:
                    duplicates.judge(result)
                committer.add(result)
                counts[result.row["status"]] += 1
                counts["kept"] += result.kept
                progress.update(t_src, advance=1, info=f"{counts['kept']} clips kept, {counts['error']} unreadable")
        finally:
            results.close()  # stops the worker processes at once when the loop ends early (a full disk)
        committer.close()
    from realaction.captions.captioners import flush_warnings

    flush_warnings()
    summary = build_summary(out)
    write_summary(out, summary)
    write_card(out, summary, _config_dict(cfg), known_configs)
    _print_table(console, summary, out)
    if summary["sources"]["done"] == 0:
        raise UserError(f"none of the {len(sources)} videos under {printable(src)} could be read "
                        f"(reasons in {printable(out / 'sources.jsonl')})")
    return summary


MAX_LISTED = 20  # sources listed by name under the table; the rest are counted (all are in sources.jsonl)


def _safe(value) -> str:
    """Text from a file name or a decoder, for the rich console: control characters escaped, no markup."""
    from rich.markup import escape

    return escape(printable(value))


def _print_table(console, summary: dict, out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"curated {_safe(out)}")
    table.add_column("clips")
    table.add_column("count", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row("[green]kept[/green]", str(summary["kept"]), f"{summary['kept_seconds']:.1f}")
    for reason, n in summary["rejected_by_reason"].items():
        table.add_row(f"rejected: {_safe(reason)}", str(n), f"{summary['rejected_seconds_by_reason'][reason]:.1f}")
    s = summary["sources"]
    table.add_row("sources done", str(s["done"]))
    if s["error"]:
        table.add_row("[red]sources unreadable[/red]", str(s["error"]))
    if s["skipped"]:
        table.add_row("[yellow]paths skipped[/yellow]", str(s["skipped"]))
    console.print(table)
    errors = list(summary["source_errors"].items())
    for reason, n in errors[:MAX_LISTED]:
        console.print(f"  unreadable ({n}): {_safe(reason)}")
    if len(errors) > MAX_LISTED:
        console.print(f"  ... and {len(errors) - MAX_LISTED} more reasons (in {_safe(out / 'sources.jsonl')})")
    skipped = list(summary["source_skipped"].items())
    for rel, reason in skipped[:MAX_LISTED]:
        console.print(f"  skipped {_safe(rel)}: {_safe(reason)}")
    if len(skipped) > MAX_LISTED:
        console.print(f"  ... and {len(skipped) - MAX_LISTED} more skipped paths (in {_safe(out / 'sources.jsonl')})")
