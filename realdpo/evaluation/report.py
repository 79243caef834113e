"""`realdpo eval`: score folders of generated videos side by side and write report.json, a table and plots."""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Iterator

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from realbase.errors import UserError
from realbase.files import write_atomic
from realdpo.configs.eval import EvalConfig
from realdpo.evaluation.intervals import LEVEL, interval
from realdpo.evaluation.metrics.base import Column, Context, Metric
from realdpo.evaluation.metrics.clipsim import ClipSimMetric
from realdpo.evaluation.metrics.fvd import FvdMetric
from realdpo.evaluation.metrics.motion import MotionMetric
from realdpo.evaluation.metrics.plugin import ScorerMetric
from realdpo.evaluation.metrics.pref import PrefMetric
from realdpo.evaluation.scoring import FrameScorer, Job, Result, init_worker, run_job
from realdpo.evaluation.videos import (
    expand_real,
    list_videos,
    match_prompts,
    parse_methods,
    read_prompts,
    read_samples,
)

BUILT_IN = (MotionMetric, ClipSimMetric, FvdMetric, PrefMetric)  # in the table's column order; a metric is one entry


def metric_list(cfg: EvalConfig, plug_in: FrameScorer | None = None) -> list[Metric]:
    """A run's metrics, in the table's column order; --lab adds the plugged-in scorer."""
    return [m() for m in BUILT_IN] + ([ScorerMetric(plug_in)] if cfg.lab else [])


# the built-in columns -> True when higher is better (a plug-in adds its own)
METRICS = {k: v for m in BUILT_IN for k, v in m.columns.items()}


def _jobs_iter(jobs: list[Job], workers: int) -> Iterator[Result]:
    if workers <= 1 or len(jobs) <= 1:
        init_worker()
        for job in jobs:
            yield run_job(job)
        return
    import multiprocessing as mp

    # spawn: the parent may hold torch/CLIP state that must not be forked
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                             initializer=init_worker) as pool:
        futures = [pool.submit(run_job, job) for job in jobs]
        for fut in as_completed(futures):
            yield fut.result()


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def evaluate(cfg: EvalConfig, lab_scorer: FrameScorer | None = None) -> dict:
    """Run every metric of `metric_list` over every method's videos; returns the report dict (also written as JSON).
    `--lab` scores with `lab_scorer`, the motion lab's tracker, which the command line plugs in (the library's
    evaluation does not import the lab)."""
    if cfg.lab and lab_scorer is None:
        raise UserError("--lab needs the motion lab's scorer; run it as `realdpo eval --lab`")
    console = Console(stderr=False)
    started = time.time()
    videos, prompts, samples, warnings = _read_methods(cfg)
    for w in warnings:
        console.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)
    ctx = Context(cfg, console, videos, prompts, expand_real(cfg.real) if cfg.real else [])

    metrics = metric_list(cfg, lab_scorer)
    skipped: dict[str, str] = {}
    active = []
    for metric in metrics:  # models load before the videos: a bad one fails before the long part
        why = metric.prepare(ctx)
        if why is None:
            active.append(metric)
        else:
            skipped.update(dict.fromkeys(metric.columns, why))
    results, real_errors, elapsed = _score(ctx, active, console)

    report = _assemble(cfg, ctx, metrics, active, results, real_errors, skipped, elapsed)
    columns = {k: c for m in metrics for k, c in m.per_video.items()}
    units = {name: _units(videos[name], prompts[name], samples[name]) for name in videos}
    report["intervals"] = _intervals(results, units, columns, cfg.bootstrap, cfg.seed)
    report["differences"], pair_warnings = _differences(results, videos, units, columns, cfg.bootstrap, cfg.seed)
    for w in pair_warnings:
        console.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)
    report["settings"]["warnings"] = warnings + pair_warnings
    report["settings"]["intervals"] = {
        "level": LEVEL, "resamples": cfg.bootstrap, "seed": cfg.seed,
        "definition": "percentile bootstrap over prompts: a resample draws the prompts with replacement and takes "
                      "the mean over all their videos (their seeds); differences are method minus the first --videos "
                      "method over the videos both have (same file name: same prompt and seed), resampled the same "
                      "way", "metrics": list(columns)}
    for metric in metrics:
        for row, values in metric.rows().items():
            report["methods"].setdefault(row, {"n_videos": 0}).update(values)

    report["settings"]["wall_seconds"] = round(time.time() - started, 2)
    report = _finite(report)
    _write(Path(cfg.out), report, results, {k: v for m in metrics for k, v in m.columns.items()}, console)
    console.print(f"{sum(len(v) for v in videos.values())} videos in {elapsed:.1f} s "
                  f"({report['settings']['videos_per_second']:.2f} videos/s); report in {cfg.out}")
    return report


def _read_methods(cfg: EvalConfig) -> tuple[dict, dict, dict, list[str]]:
    """method -> its video files, their prompts and their samples.jsonl rows; warnings about the folders."""
    prompts_file = read_prompts(cfg.prompts)
    videos: dict[str, list[Path]] = {}
    prompts: dict[str, list[str | None]] = {}
    samples: dict[str, dict[str, dict]] = {}
    for name, folder in parse_methods(cfg.videos).items():
        videos[name] = list_videos(folder)
        if not videos[name]:
            raise UserError(f"--videos {name}: no video files in {folder}")
        prompts[name] = match_prompts(videos[name], prompts_file, name)
        samples[name] = read_samples(folder)
    return videos, prompts, samples, _count_warnings(videos, prompts_file)


def _write(out: Path, report: dict, results: dict[str, list[Result | None]], directions: dict[str, bool],
           console: Console) -> None:
    """report.json, metrics.png, differences.png, each method's strip, and the table on the terminal."""
    from realdpo.evaluation.plots import differences_chart, metrics_chart, write_strip
    from realdpo.evaluation.table import print_table

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "report.json", json.dumps(report, indent=2, allow_nan=False))
    metrics_chart(report, out / "metrics.png", directions)
    if report["differences"]:
        differences_chart(report, out / "differences.png", directions)
    for name, res_list in results.items():
        strips = [(r.name, r.strip) for r in res_list if r is not None and r.strip is not None]
        if strips:
            write_strip(strips, out / f"{name}_strip.png")
    print_table(console, report, directions)


def _score(ctx: Context, metrics: list[Metric], console: Console) -> tuple[dict[str, list[Result | None]], list[str],
                                                                            float]:
    """Decode and score every video (and the metrics' reference clips) in the workers, each result then by every
    metric in this process: (method -> results in file order, reference clips that failed, seconds)."""
    cfg = ctx.cfg
    options = {k: v for m in metrics for k, v in m.job_options().items()}
    jobs = [Job(name, i, path.name, path, cfg.flow_side, cfg.sample_fps, **{"motion": False, **options},
                strip=i < cfg.strip_videos) for name, files in ctx.videos.items() for i, path in enumerate(files)]
    jobs += [job for m in metrics for job in m.reference_jobs()]
    results: dict[str, list[Result | None]] = {name: [None] * len(files) for name, files in ctx.videos.items()}
    real_errors: list[str] = []
    t0 = time.time()
    with _progress(console) as progress:
        task = progress.add_task("scoring videos", total=len(jobs), rate="")
        for done, res in enumerate(_jobs_iter(jobs, cfg.workers), 1):
            if res.method:
                results[res.method][res.index] = res
            elif res.error:
                real_errors.append(f"{res.name}: {res.error}")
            for metric in metrics:
                metric.score(res)
            res.clip_images = res.fvd_clip = None  # free the frames as we go
            elapsed = max(time.time() - t0, 1e-6)
            progress.update(task, advance=1, rate=f"{done / elapsed:.2f} videos/s")
    return results, real_errors, time.time() - t0


def _assemble(cfg, ctx, metrics, active, results, real_errors, skipped, elapsed) -> dict:
    methods_out: dict[str, dict] = {}
    per_video: dict[str, list[dict]] = {}
    errors: list[str] = list(real_errors)
    # means over videos first, then the distances between sets (FVD)
    ordered = sorted(active, key=lambda m: not m.per_video)
    for name, res_list in results.items():
        rows = []
        ok = [r for r in res_list if r is not None and r.error is None]
        for r, path, prompt in zip(res_list, ctx.videos[name], ctx.prompts[name]):
            row = {"file": path.name, "prompt": prompt}
            if r is None or r.error:
                row["error"] = r.error if r is not None else "not scored"
                errors.append(f"{name}/{path.name}: {row['error']}")
            else:
                row.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.scores.items()})
            rows.append(row)
        per_video[name] = rows
        m: dict[str, float | int] = {}
        for metric in ordered:
            values = metric.aggregate(name, ok)
            if isinstance(values, str):  # no value for this method: said among the skipped, per method
                for column in metric.columns:
                    skipped[column] = (skipped.get(column, "") + f"; {name}: {values}").lstrip("; ")
            else:
                m.update(values)
        m["n_videos"] = len(ok)
        methods_out[name] = m
    settings = {k: v for metric in metrics for k, v in metric.describe().items()}
    settings.update({
        "higher_is_better": {k: v for metric in metrics for k, v in metric.columns.items()},
        "skipped": skipped,
        "errors": errors,
        "workers": cfg.workers,
        "videos_per_second": round(sum(len(v) for v in ctx.videos.values()) / max(elapsed, 1e-6), 4),
    })
    return {"methods": methods_out, "per_video": per_video, "settings": settings}


def _count_warnings(videos: dict[str, list[Path]], prompts: list[str] | None) -> list[str]:
    """Folders that do not hold the same videos: said once, not scored as if they did."""
    out = []
    counts = {name: len(v) for name, v in videos.items()}
    if len(set(counts.values())) > 1:
        out.append("the methods have different numbers of videos (" + ", ".join(f"{n} {c}" for n, c in counts.items())
                   + "): each is scored on its own videos; paired differences use the videos both have")
    if prompts is not None:
        for name, files in videos.items():
            if len(files) < len(prompts):
                out.append(f"{name} has videos for {len(files)} of the {len(prompts)} --prompts lines")
    return out


def _units(files: list[Path], prompts: list[str | None], samples: dict[str, dict]) -> list[tuple[object, object]]:
    """(prompt, pairing key) of each video: the prompt groups a prompt's seeds for the bootstrap (its samples.jsonl
    line, else its text, else the video alone); the pairing key is the file name, with the prompt and seed
    samples.jsonl records for it."""
    out = []
    for path, prompt in zip(files, prompts):
        row = samples.get(path.name, {})
        cluster = ("line", row["line"]) if "line" in row else ("prompt", prompt) if prompt else ("video", path.name)
        out.append((cluster, (path.name, row.get("prompt", prompt), row.get("seed"))))
    return out


def _scores(res: Result | None, column: Column) -> float | None:
    if res is None or res.error is not None:
        return None
    v = res.scores.get(column.key)
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    return float(v) * column.scale


def _intervals(results: dict[str, list], units: dict[str, list], columns: dict[str, Column], resamples: int,
               seed: int) -> dict[str, dict]:
    """method -> metric -> [lo, hi], the 95 % bootstrap interval of the method's mean."""
    out: dict[str, dict] = {}
    for name, res_list in results.items():
        out[name] = {}
        for metric, column in columns.items():
            pts = [(v, u[0]) for r, u in zip(res_list, units[name]) if (v := _scores(r, column)) is not None]
            if pts:
                vals, clusters = zip(*pts)
                out[name][metric] = list(interval(vals, clusters, resamples=resamples, seed=seed))
    return out


def _differences(results: dict[str, list], videos: dict[str, list[Path]], units: dict[str, list],
                 columns: dict[str, Column], resamples: int, seed: int) -> tuple[list[dict], list[str]]:
    """Each method minus the first, over the videos both have: mean paired difference and its bootstrap interval."""
    names = list(results)
    out, warnings = [], []
    for b in names[1:]:
        a = names[0]
        by_name = {u[1][0]: (r, u) for r, u in zip(results[a], units[a])}
        pairs, mismatched = [], 0
        for rb, ub in zip(results[b], units[b]):
            if ub[1][0] not in by_name:
                continue
            ra, ua = by_name[ub[1][0]]
            if any(x is not None and y is not None and x != y for x, y in zip(ua[1], ub[1])):  # what both know
                mismatched += 1
                continue
            pairs.append((ra, rb, ua[0]))
        if mismatched:
            warnings.append(f"{mismatched} videos of {a} and {b} have the same name but another prompt or seed: left "
                            "out of their paired difference")
        if not pairs:
            continue
        row = {"a": a, "b": b, "n_pairs": len(pairs), "metrics": {}}
        for metric, column in columns.items():
            pts = [(vb - va, c) for ra, rb, c in pairs
                   if (va := _scores(ra, column)) is not None and (vb := _scores(rb, column)) is not None]
            if pts:
                diffs, clusters = zip(*pts)
                lo, hi = interval(diffs, clusters, resamples=resamples, seed=seed)
                row["metrics"][metric] = {"diff": float(np.mean(diffs)), "interval": [lo, hi], "n_pairs": len(pts)}
        out.append(row)
    return out, warnings


def _finite(obj):
    """NaN/inf (e.g. from a model that produced NaN) become null: report.json stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
