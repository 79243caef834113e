"""The motion-lab experiment: does RealDPO make the lab model's motion more physical than SFT does?

Protocol (fixed before any DPO arm was run; README, "The motion lab"):
- base model: the committed lab model (realdpo/lab/model), a CogVideoX image-to-video pipeline trained on the web mix
  (`--model DIR` runs the same protocol from another saved lab pipeline, in its own --out);
- real set: REAL clips of the lab's `real` set (physical only), written as mp4 + caption files and curated with
  `realdpo curate`; every arm trains on the same shards;
- arms (`realdpo train` with the same steps, batch, lr schedule, LoRA rank, t-range and seed set): sft (--loss sft),
  dpo (--loss dpo, K = 3), dpo+sft (--loss dpo+sft), dpo-r2 (--loss dpo --rounds 2: fresh negatives from the policy
  half-way); base is the untrained model;
- negatives: K = 3 per real clip from the model's own pipeline at the sampler settings below (round 1: the base);
- evaluation: PROMPTS held-out first frames + captions (the `heldout` set), sampler seed 1000 + i for prompt i,
  SAMPLE_STEPS DDIM steps at guidance SAMPLE_GUIDANCE; every video scored by realdpo.lab.tracker (physical rate,
  residual, and the graded consistent frames and balls found) and realdpo.evaluation.motion (dynamic degree, motion
  smoothness);
- seeds: 0, 1, 2 (training seed: LoRA init, data order, noise, and the negatives' sampler seeds); mean +- std.

Outputs in --out: results.json, table.md, physical_rate.png (bar chart), strip.png (held-out prompt 0, every
method, seed 0), runs/<arm>-s<seed>-r<real>-k<steps>/ (the training run and its held-out scores). A rerun reuses
finished runs; a run scored before the current metric (SCORES_VERSION) is scored again from its saved LoRA.
The last line printed is `physical_rate base=<a> sft=<b> dpo=<c>`.

    python bench/motion_lab.py --workers 2     # the experiment (3 seeds, 64 prompts) on a 2-core machine
    python bench/motion_lab.py --quick         # 1 seed, 16 prompts, 16 real clips, 40 steps: a preview
    python bench/motion_lab.py --extra dpo-b500:loss=dpo,beta=500   # an ablation arm (repeatable)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realdpo.configs.train import TrainConfig  # noqa: E402
from realdpo.lab.evaluate import generate_videos, heldout_prompts, score_videos, write_strip_png  # noqa: E402
from realdpo.lab.model import SAMPLE_GUIDANCE, SAMPLE_STEPS, lab_model_path  # noqa: E402
from realdpo.lab.sets import curated_real_set  # noqa: E402

ARMS = {
    "sft": {"loss": "sft"},
    "dpo": {"loss": "dpo"},
    "dpo+sft": {"loss": "dpo+sft"},
    "dpo-r2": {"loss": "dpo", "rounds": 2},
}
COMMON = dict(steps=100, batch_size=4, lr=1e-3, lr_scheduler="constant", warmup_steps=10, lora_rank=16, beta=5000.0,
              t_min=0.0, t_max=0.5, negatives=3, neg_steps=SAMPLE_STEPS, neg_guidance=SAMPLE_GUIDANCE,
              neg_batch_size=16, checkpoint_every=0)
FULL = dict(seeds=[0, 1, 2], prompts=64, real=64)
QUICK = dict(seeds=[0], prompts=16, real=16, steps=40)
STRIP_PROMPT = 0
SCORES_VERSION = 3  # 2: the graded consistent_frames and balls_found; 3: balls_found counts a frame-0 colour once
METRICS = ("physical_rate", "residual", "consistent_frames", "balls_found", "dynamic_degree", "motion_smoothness")


def _parse_extra(spec: str) -> tuple[str, dict]:
    name, _, body = spec.partition(":")
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    overrides = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in types:
            raise SystemExit(f"--extra {spec}: unknown train option {key!r}")
        kind = types[key] if isinstance(types[key], str) else types[key].__name__
        overrides[key] = float(value) if "float" in kind else int(value) if "int" in kind else value
    return name, overrides


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _console():
    from rich.console import Console

    return Console()


def evaluate(spec, prompts, batch: int = 16) -> tuple[dict, np.ndarray]:
    videos = generate_videos(spec, prompts, steps=SAMPLE_STEPS, guidance=SAMPLE_GUIDANCE, batch_size=batch)
    return {**score_videos(videos), "scores_version": SCORES_VERSION}, videos[STRIP_PROMPT]


def _saved(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _current(scores: dict | None) -> dict | None:
    """Saved scores if they were made by the current metric."""
    return scores if scores is not None and scores.get("scores_version") == SCORES_VERSION else None


def run_dir(out: Path, name: str, seed: int, n_real: int, steps: int) -> Path:
    return out / "runs" / f"{name}-s{seed}-r{n_real}-k{steps}"


def run_arm(name: str, overrides: dict, seed: int, shards: list[str], n_real: int, prompts, out: Path,
            steps: int, model: Path) -> dict:
    """Train one arm at one seed (or reuse a finished run: its training is then only checked complete) and score
    it on the held-out prompts."""
    from realdpo.generation.sampling import load_lora
    from realdpo.models import load_spec
    from realdpo.training.trainer import train

    run = run_dir(out, name, seed, n_real, steps)
    done = run / f"heldout-{len(prompts.captions)}.json"
    previous = _saved(done)
    if previous is not None and previous.get("overrides") != overrides:
        raise SystemExit(f"{run} was trained as {name}:{previous.get('overrides')}, not {overrides}; give the arm "
                         "another name or another --out")
    if (scores := _current(previous)) is not None:
        return scores
    t0, c0 = time.perf_counter(), time.process_time()
    cfg = TrainConfig(**{**COMMON, "steps": steps, **overrides}, shards=shards, out=run / "train",
                      model=model, seed=seed, cache_dir=out / "cache", resume=True)
    cfg.validate()
    train(cfg)
    t_train, c_train = time.perf_counter() - t0, time.process_time() - c0
    spec = load_spec(model)
    load_lora(spec, run / "train" / "lora")
    metrics, strip = evaluate(spec, prompts)
    metrics.update(arm=name, seed=seed, overrides=overrides, train_seconds=round(t_train, 1),
                   eval_seconds=round(time.perf_counter() - t0 - t_train, 1), train_cpu_seconds=round(c_train, 1),
                   eval_cpu_seconds=round(time.process_time() - c0 - c_train, 1))
    if previous is not None:  # re-scored: the training times are the original run's
        metrics.update({k: previous[k] for k in ("train_seconds", "train_cpu_seconds") if k in previous},
                       rescored_from_version=previous.get("scores_version", 1))
    np.save(run / "strip.npy", strip)
    tmp = run / ".heldout.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=1))
    os.replace(tmp, done)
    return metrics


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    table = {}
    for name, rows in results.items():
        entry = {"n_seeds": len(rows)}
        for key in METRICS:
            vals = [r[key] for r in rows if r.get(key) is not None]
            entry[key] = (float(np.mean(vals)), float(np.std(vals))) if vals else (None, None)
        entry["failed"] = {c: float(np.mean([r["failed"][c] for r in rows])) for c in rows[0]["failed"]}
        table[name] = entry
    return table


def markdown_table(summary: dict[str, dict]) -> str:
    def cell(v, fmt):
        m, s = v
        return "—" if m is None else f"{m:{fmt}} ± {s:{fmt}}"

    lines = ["| method | seeds | physical rate (%) ↑ | residual (px) ↓ | consistent frames (%) ↑ | balls found (%) ↑ | "
             "dynamic degree (%) | motion smoothness | failed checks (% of videos) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, e in summary.items():
        failed = ", ".join(f"{c} {v:.0f}" for c, v in e["failed"].items() if v > 0)
        lines.append(f"| {name} | {e['n_seeds']} | {cell(e['physical_rate'], '.1f')} | {cell(e['residual'], '.2f')} | "
                     f"{cell(e['consistent_frames'], '.1f')} | {cell(e['balls_found'], '.1f')} | "
                     f"{cell(e['dynamic_degree'], '.1f')} | {cell(e['motion_smoothness'], '.2f')} | {failed} |")
    return "\n".join(lines)


def bar_chart(summary: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("physical_rate", "physical rate (%) ↑"), ("residual", "residual (px) ↓"),
            ("consistent_frames", "consistent frames (%) ↑"), ("balls_found", "balls found (%) ↑"),
            ("dynamic_degree", "dynamic degree (%)"), ("motion_smoothness", "motion smoothness")]
    names = list(summary)
    fig, axes = plt.subplots(2, len(keys) // 2, figsize=(3.4 * len(keys) // 2, 6.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes.flat, keys):
        means = [np.nan if summary[n][key][0] is None else summary[n][key][0] for n in names]
        stds = [0 if summary[n][key][1] is None else summary[n][key][1] for n in names]
        bars = ax.bar(range(len(names)), means, yerr=stds, capsize=3,
                      color=[colors[i % len(colors)] for i in range(len(names))])
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(title, fontsize=9)
    fig.suptitle("motion lab: mean ± std over training seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _job_order(arms: dict[str, dict], seeds: list[int]) -> list[tuple[str, int]]:
    """Every (arm, seed), arm by arm with the seeds interleaved, the arms that generate negatives first and sft
    last: parallel workers then start on different seeds' round-1 negatives (which the later arms of a seed reuse
    from the cache) and finish on the cheapest runs."""
    order = sorted(arms, key=lambda name: arms[name].get("loss", "dpo") == "sft")
    return [(name, seed) for name in order for seed in seeds]


def _claim(folder: Path, job: str) -> bool:
    try:
        os.close(os.open(folder / job, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _children_cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_workers(n: int, argv: list[str], out: Path, console) -> None:
    """Run this command's training runs in n single-thread worker processes that share the job list through
    claim files (a fresh claims folder per call, so a rerun after a kill claims the unfinished runs again)."""
    import subprocess
    import tempfile

    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    claims = Path(tempfile.mkdtemp(prefix="claims-", dir=out))
    rest, skip = [], False
    for a in argv:  # this command's arguments less --workers and --threads (and their values)
        if not skip and not a.startswith(("--workers", "--threads")):
            rest.append(a)
        skip = a in ("--workers", "--threads")
    cmd = [sys.executable, str(Path(__file__).resolve()), *rest, "--threads", "1", "--claims", str(claims)]
    console.print(f"{n} workers, logs in {logs}")
    files = [open(logs / f"worker-{i}.log", "w") for i in range(n)]
    procs = [subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT) for f in files]
    codes = [p.wait() for p in procs]
    for f in files:
        f.close()
    if any(codes):
        raise SystemExit(f"a worker failed (exit codes {codes}); see {logs}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out/motion_lab"))
    ap.add_argument("--quick", action="store_true", help="1 seed, 16 prompts, 16 real clips, 40 steps (a preview; < 5 min on 2 cores)")
    ap.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2; --quick: 0)")
    ap.add_argument("--prompts", type=int, help="held-out prompts (default 64; --quick: 16)")
    ap.add_argument("--real", type=int, help="real clips (default 64; --quick: 16)")
    ap.add_argument("--steps", type=int, help=f"optimizer steps per arm (default {COMMON['steps']}; --quick: 40)")
    ap.add_argument("--arms", nargs="*", default=list(ARMS), help=f"arms to run (default {' '.join(ARMS)})")
    ap.add_argument("--extra", action="append", default=[], help="an extra arm NAME:option=value,... (ablations)")
    ap.add_argument("--model", type=Path, default=None,
                    help="base model folder (default: the committed lab model); one --out holds runs of one model")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--workers", type=int, default=1,
                    help="train and score the runs in this many single-thread processes (2 on a 2-core machine: "
                         "two 2-thread processes would slow each other down); logs in OUT/logs/")
    ap.add_argument("--claims", type=Path, help=argparse.SUPPRESS)  # set for the worker processes
    args = ap.parse_args(argv)
    preset = QUICK if args.quick else FULL
    seeds = args.seeds or preset["seeds"]
    n_prompts, n_real = args.prompts or preset["prompts"], args.real or preset["real"]
    steps = args.steps or preset.get("steps", COMMON["steps"])
    arms = {name: ARMS[name] for name in args.arms}
    arms.update(_parse_extra(e) for e in args.extra)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = (args.model or lab_model_path()).resolve()
    if not (model / "model_index.json").is_file():
        raise SystemExit(f"--model {model}: not a saved pipeline folder (no model_index.json)")
    model_file = out / "model.txt"  # runs, negatives and scores in OUT all belong to this one base model
    if model_file.is_file() and model_file.read_text().strip() != str(model):
        raise SystemExit(f"{out} holds runs of the base model {model_file.read_text().strip()}; use another --out")
    model_file.write_text(f"{model}\n")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    console = _console()
    os.environ.setdefault("REALDPO_HOME", str(out / "home"))
    started, cpu_started = time.perf_counter(), time.process_time()
    timings = {}

    from realdpo.models import load_spec

    t0 = time.perf_counter()
    shards = curated_real_set(out / f"real-{n_real}", n_real)
    timings["curate_real_set"] = round(time.perf_counter() - t0, 1)
    prompts = heldout_prompts(n_prompts)

    results: dict[str, list[dict]] = {}
    strips: dict[str, np.ndarray] = {}
    base_file = out / f"base-{n_prompts}.json"
    t0 = time.perf_counter()
    if (base := _current(_saved(base_file))) is not None:
        strips["base"] = np.load(out / "base_strip.npy")
    else:
        base, strips["base"] = evaluate(load_spec(model), prompts)
        np.save(out / "base_strip.npy", strips["base"])
        base_file.write_text(json.dumps(base, indent=1))
    timings["base_eval"] = round(time.perf_counter() - t0, 1)
    results["base"] = [base]
    console.print(f"base: physical rate {base['physical_rate']:.1f}%")
    if args.claims is not None:  # a worker: run whatever jobs no other worker has claimed, then stop
        for name, seed in _job_order(arms, seeds):
            if _claim(args.claims, f"{name}-s{seed}"):
                run_arm(name, arms[name], seed, shards, n_real, prompts, out, steps, model)
        return {}
    if args.workers > 1:
        _run_workers(args.workers, argv if argv is not None else sys.argv[1:], out, console)
    for name, overrides in arms.items():
        results[name] = []
        for seed in seeds:
            console.rule(f"{name} seed {seed}")
            r = run_arm(name, overrides, seed, shards, n_real, prompts, out, steps, model)
            results[name].append(r)
            timings[f"{name}-s{seed}"] = r.get("train_seconds", 0) + r.get("eval_seconds", 0)
            console.print(f"{name} seed {seed}: physical rate {r['physical_rate']:.1f}%")
            if seed == seeds[0]:
                strips[name] = np.load(run_dir(out, name, seed, n_real, steps) / "strip.npy")

    summary = summarize(results)
    table = markdown_table(summary)
    total = round(time.perf_counter() - started, 1)
    total_cpu = round(time.process_time() - cpu_started + _children_cpu_seconds(), 1)
    (out / "table.md").write_text(table + "\n")
    bar_chart(summary, out / "physical_rate.png")
    write_strip_png(strips, out / "strip.png")
    report = {"protocol": {"model": str(model), "common": {**COMMON, "steps": steps}, "arms": arms, "seeds": seeds,
                           "prompts": n_prompts, "real_clips": n_real, "sample_steps": SAMPLE_STEPS,
                           "sample_guidance": SAMPLE_GUIDANCE},
              "summary": summary, "runs": results, "timings_s": timings, "wall_seconds": total,
              "cpu_seconds": total_cpu, "torch_threads": torch_threads()}
    (out / "results.json").write_text(json.dumps(report, indent=1))
    console.print(table)
    console.print(f"wall time {total:.0f} s, CPU time {total_cpu:.0f} s ({torch_threads()} torch threads; a loaded "
                  f"machine inflates the first, not the second); outputs in {out}")

    def rate(name):
        return f"{summary[name]['physical_rate'][0]:.1f}" if name in summary else "n/a"

    def graded(name):
        return f"{summary[name]['consistent_frames'][0]:.1f}" if name in summary else "n/a"

    console.print(f"consistent_frames base={graded('base')} sft={graded('sft')} dpo={graded('dpo')}")
    print(f"physical_rate base={rate('base')} sft={rate('sft')} dpo={rate('dpo')}")
    return report


if __name__ == "__main__":
    main()
