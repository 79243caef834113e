"""`realdpo curate`: run every source under --src through the single-pass curator, in parallel, resumably."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

from realaction.config import CurateConfig
from realaction.dedup import DuplicateIndex
from realaction.errors import UserError
from realaction.probe import Skipped, Source, discover
from realaction.process_pool import ProcessPool, WorkerDied
from realaction.report import build_summary, record_config, write_card, write_summary
from realaction.shards import ShardCommitter, append_jsonl, iter_jsonl, prepare_out
from realaction.source_tasks import init_pool_worker, run_in_pool_worker, worker_died_row
from realaction.worker import Models, SourceCurator, SourceResult, config_hash

# -- where the per-source work runs -------------------------------------------------------------------------


def uses_pool(cfg: CurateConfig, n_sources: int) -> bool:
    return cfg.engine == "ray" or (cfg.workers > 1 and n_sources > 1)


def run_sources(sources: list[Source], cfg: CurateConfig, models: Models | None,
                progress: Callable[[int, int], None]) -> Iterator[SourceResult]:
    """Results as sources finish: in this process for one worker, else in worker processes (ours or Ray's).
    A source whose worker dies is an `error: worker died` result; the run goes on."""
    if cfg.engine == "ray":
        from realaction.ray_engine import run_on_ray

        yield from run_on_ray(sources, cfg, progress)
        return
    if not uses_pool(cfg, len(sources)):
        curator = SourceCurator(cfg, models or Models(cfg), Path(cfg.src), progress)
        previous = None
        for source in sources:
            result = curator.run(source)  # the previous source's clips finish encoding meanwhile
            if previous is not None:
                yield previous.resolve()
            previous = result
        if previous is not None:
            yield previous.resolve()
        return
    pool = ProcessPool(min(cfg.workers, len(sources)), init_pool_worker, (cfg,), run_in_pool_worker, on_event=progress)
    for outcome in pool.run(sources):
        source = outcome.item
        if isinstance(outcome.error, WorkerDied):
            yield worker_died_row(source, str(outcome.error))
        elif outcome.error is not None:
            yield SourceResult({"source": source.rel, "source_id": source.source_id, "status": "error",
                                "reason": str(outcome.error)})
        else:
            yield outcome.result


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
        why = f"; skipped {len(skipped)}, e.g. {skipped[0].rel}: {skipped[0].reason}" if skipped else ""
        raise UserError(f"no videos under {src} (looked for .mp4, .mov, .mkv, .avi, .webm, .m4v, .mpg and similar{why})")
    # Models are built, and Ray reached, before any work so that a bad checkpoint, a missing dependency or a
    # wrong --ray-address fails in one line; worker processes build their own models.
    models = Models(cfg)
    if cfg.engine == "ray":
        from realaction.ray_engine import ray_session

        with ray_session(cfg):
            return _curate(cfg, sources, skipped, models)
    return _curate(cfg, sources, skipped, models)


def _curate(cfg: CurateConfig, sources: list[Source], skipped: list[Skipped], models: Models) -> dict:
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
        console.print(f"note: {out / 'manifest.jsonl'} held {state.non_finite} bare NaN/Infinity value(s) (not JSON, "
                      "written by an older version): read as null and rewritten as valid JSON", markup=False)
    if state.done:
        console.print(f"resuming: {len(sources) - len(todo)} of {len(sources)} sources already done")
        if any(r.get("config_hash") != config_hash(cfg) for r in state.done.values()):
            console.print("[yellow]warning:[/yellow] some finished sources were curated with other options; "
                          "their clips stay as they are (use a new --out to redo them); DATA_CARD.md lists which "
                          "sources and clips came from which options")
    committer = ShardCommitter(out, state.next_shard, cfg.shard_max_count, cfg.shard_max_mb * 1024 * 1024,
                               cfg.commit_seconds)
    # Near-duplicates are judged here, as results are committed: one index over every kept clip of every
    # engine's workers, rebuilt on resume from the manifest rows of finished sources (realaction.dedup).
    duplicates = DuplicateIndex.from_manifest(iter_jsonl(out / "manifest.jsonl"), cfg.dup_distance) if cfg.dedup else None
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

        for result in run_sources(todo, cfg, models, on_progress):
            if duplicates is not None:
                duplicates.judge(result)
            committer.add(result)
            counts[result.row["status"]] += 1
            counts["kept"] += result.kept
            progress.update(t_src, advance=1, info=f"{counts['kept']} clips kept, {counts['error']} unreadable")
        committer.close()
    from realaction.captioners import flush_warnings

    flush_warnings()
    summary = build_summary(out)
    write_summary(out, summary)
    write_card(out, summary, _config_dict(cfg), known_configs)
    _print_table(console, summary, out)
    if summary["sources"]["done"] == 0:
        raise UserError(f"none of the {len(sources)} videos under {src} could be read (reasons in {out / 'sources.jsonl'})")
    return summary


def _print_table(console, summary: dict, out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"curated {out}")
    table.add_column("clips")
    table.add_column("count", justify="right")
    table.add_column("seconds", justify="right")
    table.add_row("[green]kept[/green]", str(summary["kept"]), f"{summary['kept_seconds']:.1f}")
    for reason, n in summary["rejected_by_reason"].items():
        table.add_row(f"rejected: {reason}", str(n), f"{summary['rejected_seconds_by_reason'][reason]:.1f}")
    s = summary["sources"]
    table.add_row("sources done", str(s["done"]))
    if s["error"]:
        table.add_row("[red]sources unreadable[/red]", str(s["error"]))
    if s["skipped"]:
        table.add_row("[yellow]paths skipped[/yellow]", str(s["skipped"]))
    console.print(table)
    for reason, n in summary["source_errors"].items():
        console.print(f"  unreadable ({n}): {reason}")
    for rel, reason in summary["source_skipped"].items():
        console.print(f"  skipped {rel}: {reason}")
