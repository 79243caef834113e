"""`realdpo eval`: score folders of generated videos side by side and write report.json, a table and plots."""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from realbase.errors import UserError
from realbase.files import write_atomic
from realdpo.configs.eval import EvalConfig
from realdpo.evaluation import motion
from realdpo.evaluation.intervals import LEVEL, interval
from realdpo.evaluation.scoring import FrameScorer, Job, Result, init_worker, run_job
from realdpo.evaluation.videos import (
    expand_real,
    list_videos,
    match_prompts,
    parse_methods,
    read_prompts,
    read_samples,
)

# Metric name -> True when higher is better. Order is the table's column order.
METRICS = {
    "dynamic_degree": True,
    "motion_smoothness": True,
    "flicker": False,
    "clipsim": True,
    "fvd": False,
    "pref_accuracy": True,
    "pref_margin": True,
    "physical_rate": True,  # --lab only
    "lab_residual": False,
    "lab_consistent_frames": True,
    "lab_balls_found": True,
}
# Metric -> (per-video score it is the mean of, scale): these get bootstrap intervals and paired differences (FVD is
# a distance between two sets of videos, pref_accuracy comes from --pairs: neither is a mean over videos)
PER_VIDEO = {"dynamic_degree": ("dynamic", 100.0), "motion_smoothness": ("motion_smoothness", 1.0),
             "flicker": ("flicker", 1.0), "clipsim": ("clipsim", 1.0), "physical_rate": ("lab_physical", 100.0),
             "lab_residual": ("lab_residual", 1.0), "lab_consistent_frames": ("lab_consistent_frames", 1.0),
             "lab_balls_found": ("lab_balls_found", 1.0)}


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


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def evaluate(cfg: EvalConfig, lab_scorer: FrameScorer | None = None) -> dict:
    """Run every available metric over every method's videos; returns the report dict (also written as JSON).
    `--lab` scores with `lab_scorer`, the motion lab's tracker, which the command line plugs in (the library's
    evaluation does not import the lab)."""
    if cfg.lab and lab_scorer is None:
        raise UserError("--lab needs the motion lab's scorer; run it as `realdpo eval --lab`")
    console = Console(stderr=False)
    started = time.time()
    methods = parse_methods(cfg.videos)
    prompts_file = read_prompts(cfg.prompts)
    videos: dict[str, list[Path]] = {}
    prompts: dict[str, list[str | None]] = {}
    samples: dict[str, dict[str, dict]] = {}
    for name, folder in methods.items():
        videos[name] = list_videos(folder)
        if not videos[name]:
            raise UserError(f"--videos {name}: no video files in {folder}")
        prompts[name] = match_prompts(videos[name], prompts_file, name)
        samples[name] = read_samples(folder)
    warnings = _count_warnings(videos, prompts_file)
    for w in warnings:
        console.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)
    real = expand_real(cfg.real) if cfg.real else []

    skipped: dict[str, str] = {}
    clip_model = None
    if cfg.clip_checkpoint is None:
        skipped["clipsim"] = "no --clip-checkpoint given"
    elif not all(p for ps in prompts.values() for p in ps):
        skipped["clipsim"] = "some videos have no prompt (give --prompts or a <stem>.txt beside each video)"
    else:
        from realdpo.evaluation.clipsim import ClipScorer

        clip_model = ClipScorer.load(cfg.clip_arch, cfg.clip_checkpoint)
    detector = None
    if cfg.i3d is None:
        skipped["fvd"] = "no --i3d given"
    elif not real:
        skipped["fvd"] = "no --real clips given"
    else:
        from realdpo.evaluation.fvd import i3d_features, load_i3d

        detector = load_i3d(cfg.i3d, trust=cfg.trust_i3d)
    pref = None
    if not cfg.pairs:
        skipped["pref_accuracy"] = skipped["pref_margin"] = "no --pairs given"
    else:  # before the videos: a bad --lora or --model fails before the long part
        from realdpo.evaluation.pref_accuracy import preference_accuracy

        pref = preference_accuracy(cfg, console)
        if "skipped" in pref:
            skipped["pref_accuracy"] = skipped["pref_margin"] = pref["skipped"]

    jobs: list[Job] = []
    for name, files in videos.items():
        for i, path in enumerate(files):
            jobs.append(Job(name, i, path.name, path, cfg.flow_side, cfg.sample_fps,
                            clip_frames=cfg.clip_frames if clip_model is not None else None,
                            fvd=detector is not None, strip=i < cfg.strip_videos,
                            scorer=lab_scorer if cfg.lab else None))
    if detector is not None:
        jobs += [Job("", i, c.name, c.data, cfg.flow_side, cfg.sample_fps, motion=False, fvd=True)
                 for i, c in enumerate(real)]

    results: dict[str, list[Result | None]] = {name: [None] * len(files) for name, files in videos.items()}
    real_feats: list[np.ndarray] = []
    gen_feats: dict[str, list[np.ndarray]] = {name: [] for name in videos}
    text_cache: dict = {}  # prompt -> text embedding
    real_errors: list[str] = []

    t0 = time.time()
    with _progress(console) as progress:
        task = progress.add_task("scoring videos", total=len(jobs), rate="")
        for done, res in enumerate(_jobs_iter(jobs, cfg.workers), 1):
            if not res.method:
                if res.error:
                    real_errors.append(f"{res.name}: {res.error}")
                elif res.fvd_clip is not None:
                    real_feats.append(i3d_features(detector, [res.fvd_clip])[0])
            else:
                results[res.method][res.index] = res
                if res.clip_images is not None:
                    prompt = prompts[res.method][res.index]
                    if prompt not in text_cache:
                        text_cache[prompt] = clip_model.text_embedding(prompt)
                    res.scores["clipsim"] = clip_model.score(res.clip_images, text_cache[prompt])
                if res.fvd_clip is not None:
                    gen_feats[res.method].append(i3d_features(detector, [res.fvd_clip])[0])
                res.clip_images = res.fvd_clip = None  # free the frames as we go
            elapsed = max(time.time() - t0, 1e-6)
            progress.update(task, advance=1, rate=f"{done / elapsed:.2f} videos/s")
    elapsed = time.time() - t0

    report = _assemble(cfg, videos, prompts, results, gen_feats, real_feats, real, real_errors, skipped, elapsed)
    units = {name: _units(videos[name], prompts[name], samples[name]) for name in videos}
    report["intervals"] = _intervals(results, units, cfg.bootstrap, cfg.seed)
    report["differences"], pair_warnings = _differences(results, videos, units, cfg.bootstrap, cfg.seed)
    for w in pair_warnings:
        console.print(f"warning: {w}", markup=False, highlight=False, soft_wrap=True)
    report["settings"]["warnings"] = warnings + pair_warnings
    report["settings"]["intervals"] = {
        "level": LEVEL, "resamples": cfg.bootstrap, "seed": cfg.seed,
        "definition": "percentile bootstrap over prompts: a resample draws the prompts with replacement and takes "
                      "the mean over all their videos (their seeds); differences are method minus the first --videos "
                      "method over the videos both have (same file name: same prompt and seed), resampled the same "
                      "way", "metrics": list(PER_VIDEO)}
    if cfg.lab:
        report["settings"]["lab"] = lab_scorer.settings
    if pref is not None:
        if pref["metrics"]:
            report["methods"].setdefault(cfg.pref_name, {"n_videos": 0}).update(pref["metrics"])
        report["settings"]["pref_accuracy"] = {"row": cfg.pref_name, **pref["settings"],
                                               "definition": "percentage of (real clip, cached negative) pairs whose "
                                               "policy-vs-reference error difference d_k < 0, a tie counting one "
                                               "half; pref_margin is mean "
                                               "-(beta/2) d_k; errors averaged over fixed timesteps and noise"}

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    report["settings"]["wall_seconds"] = round(time.time() - started, 2)
    report = _finite(report)
    write_atomic(out / "report.json", json.dumps(report, indent=2, allow_nan=False))

    from realdpo.evaluation.plots import differences_chart, metrics_chart, write_strip
    from realdpo.evaluation.table import print_table

    metrics_chart(report, out / "metrics.png", METRICS)
    if report["differences"]:
        differences_chart(report, out / "differences.png", METRICS)
    for name, res_list in results.items():
        strips = [(r.name, r.strip) for r in res_list if r is not None and r.strip is not None]
        if strips:
            write_strip(strips, out / f"{name}_strip.png")
    print_table(console, report, METRICS)
    console.print(f"{sum(len(v) for v in videos.values())} videos in {elapsed:.1f} s "
                  f"({report['settings']['videos_per_second']:.2f} videos/s); report in {out}")
    return report


def _assemble(cfg, videos, prompts, results, gen_feats, real_feats, real, real_errors, skipped, elapsed) -> dict:
    methods_out: dict[str, dict] = {}
    per_video: dict[str, list[dict]] = {}
    errors: list[str] = list(real_errors)
    fvd_on = "fvd" not in skipped
    for name, res_list in results.items():
        rows = []
        ok = [r for r in res_list if r is not None and r.error is None]
        for r, path, prompt in zip(res_list, videos[name], prompts[name]):
            row = {"file": path.name, "prompt": prompt}
            if r is None or r.error:
                row["error"] = r.error if r is not None else "not scored"
                errors.append(f"{name}/{path.name}: {row['error']}")
            else:
                row.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.scores.items()})
            rows.append(row)
        per_video[name] = rows
        m: dict[str, float | int] = {}
        dyn = [r.scores["dynamic"] for r in ok if r.scores.get("dynamic") is not None]
        if dyn:
            m["dynamic_degree"] = 100.0 * float(np.mean(dyn))
        for key in ("motion_smoothness", "flicker", "clipsim"):
            v = _mean(r.scores.get(key) for r in ok)
            if v is not None:
                m[key] = v
        if cfg.lab:
            m.update(_lab_metrics(ok))
        if fvd_on:
            fvd = _fvd(gen_feats[name], real_feats)
            if isinstance(fvd, str):
                skipped.setdefault("fvd", "")
                skipped["fvd"] = (skipped["fvd"] + f"; {name}: {fvd}").lstrip("; ")
            else:
                m["fvd"] = fvd
        m["n_videos"] = len(ok)
        methods_out[name] = m
    settings = {
        "flow": motion.FLOW_ALGORITHM,
        "flow_short_side": cfg.flow_side,
        "sample_fps": cfg.sample_fps,
        "dynamic_rule": "a sampled pair moves when the mean of its top 5% flow magnitudes exceeds "
                        "6.0 * min(H, W) / 256 * max(1, sample_fps / fps) at the working resolution H x W; "
                        "a video is dynamic when round(4 * n_sampled / 16) pairs move",
        "motion_smoothness": "odd frames dropped and rebuilt by bidirectional-flow interpolation of their "
                             "neighbours; (255 - MAE) / 255 * 100 on uint8 RGB at the working resolution",
        "flicker": "mean |frame_t - warp(frame_t+1, flow t->t+1)| in uint8 gray levels, RGB, working resolution; "
                   "lower is better",
        "clipsim": {"arch": cfg.clip_arch, "checkpoint": str(cfg.clip_checkpoint) if cfg.clip_checkpoint else None,
                    "frames": "every frame" if cfg.clip_frames == 0 else cfg.clip_frames,
                    "definition": "mean cosine(image embedding of frame, text embedding of prompt) x 100"},
        "fvd": {"i3d": str(cfg.i3d) if cfg.i3d else None, "n_real": len(real_feats), "real_sources": len(real),
                "frames": 16, "size": 224, "definition": "Fréchet distance of I3D logits (first 16 frames, "
                "shorter side 224 + centre crop, [-1, 1]) between generated and real clips"},
        "higher_is_better": dict(METRICS),
        "skipped": skipped,
        "errors": errors,
        "workers": cfg.workers,
        "videos_per_second": round(sum(len(v) for v in videos.values()) / max(elapsed, 1e-6), 4),
    }
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


def _scores(res: Result | None, metric: str) -> float | None:
    key, scale = PER_VIDEO[metric]
    if res is None or res.error is not None:
        return None
    v = res.scores.get(key)
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    return float(v) * scale


def _intervals(results: dict[str, list], units: dict[str, list], resamples: int, seed: int) -> dict[str, dict]:
    """method -> metric -> [lo, hi], the 95 % bootstrap interval of the method's mean."""
    out: dict[str, dict] = {}
    for name, res_list in results.items():
        out[name] = {}
        for metric in PER_VIDEO:
            pts = [(v, u[0]) for r, u in zip(res_list, units[name]) if (v := _scores(r, metric)) is not None]
            if pts:
                vals, clusters = zip(*pts)
                out[name][metric] = list(interval(vals, clusters, resamples=resamples, seed=seed))
    return out


def _differences(results: dict[str, list], videos: dict[str, list[Path]], units: dict[str, list], resamples: int,
                 seed: int) -> tuple[list[dict], list[str]]:
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
        for metric in PER_VIDEO:
            pts = [(vb - va, c) for ra, rb, c in pairs
                   if (va := _scores(ra, metric)) is not None and (vb := _scores(rb, metric)) is not None]
            if pts:
                diffs, clusters = zip(*pts)
                lo, hi = interval(diffs, clusters, resamples=resamples, seed=seed)
                row["metrics"][metric] = {"diff": float(np.mean(diffs)), "interval": [lo, hi], "n_pairs": len(pts)}
        out.append(row)
    return out, warnings


def _lab_metrics(ok: list[Result]) -> dict:
    phys = [r.scores["lab_physical"] for r in ok if "lab_physical" in r.scores]
    out = {"physical_rate": 100.0 * float(np.mean(phys))} if phys else {}
    for key in ("lab_residual", "lab_consistent_frames", "lab_balls_found"):
        value = _mean(r.scores.get(key) for r in ok)
        if value is not None:
            out[key] = value
    return out


def _finite(obj):
    """NaN/inf (e.g. from a model that produced NaN) become null: report.json stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _fvd(gen: list[np.ndarray], real: list[np.ndarray]) -> float | str:
    from realdpo.evaluation.frechet import frechet_from_features

    if len(gen) < 2 or len(real) < 2:
        return f"needs at least 2 generated and 2 real clips of >= 16 frames (have {len(gen)} and {len(real)})"
    return frechet_from_features(np.stack(gen), np.stack(real))
