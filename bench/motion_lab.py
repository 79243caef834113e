"""The motion-lab experiment: does RealDPO make the lab model's motion more physical than SFT does?

Protocol (fixed before any arm was run but the prompt count, 64 then 256; docs/lab.md, "The experiment"):
- base model: the committed lab model (realdpo/lab/model), a CogVideoX image-to-video pipeline trained on the web mix
  (`--model DIR` runs the same protocol from another saved lab pipeline, in its own --out);
- real set: REAL clips of the lab's `real` set (physical only), written as mp4 + caption files and curated with
  `realdpo curate`; every arm trains on the same shards;
- arms (`realdpo train`, same batch, seeds and training compute: the DPO arms run a DPO_STEP_COST-th of sft's
  steps): sft (the positive control's setting, `SFT`); the DPO arms at the
  setting the validation sweep chose (`--sweep`: lr x beta at LoRA rank 128, constant lr after warm-up, read from
  SWEEP_FILE): **dpo, the method's recipe** (K generated negatives, decoded and re-encoded through the real clips'
  path), dpo-raw (raw sampler latents, the ablation), dpo+sft, dpo-r2 (fresh negatives from the policy half-way),
  edited-real and noised-real (negatives made from the real clip instead of sampled); base is the untrained model;
- evaluation: PROMPTS held-out first frames + captions (the `heldout` set), sampler seed 1000 + i for prompt i,
  SAMPLE_STEPS DDIM steps at guidance SAMPLE_GUIDANCE, scored by realdpo.lab.tracker (physical rate, render pass,
  physical among videos that render) and realdpo.evaluation.motion; 95 % bootstrap intervals over prompts (each
  prompt's videos are its training seeds), and paired differences against base and sft;
- health: each DPO run's implicit-reward accuracy and margin per step (its metrics.jsonl), plotted, with the step at
  which the library's health monitor first calls the run saturated;
- seeds: 0, 1, 2 for every arm (training seed: LoRA init, data order, noise, and the negatives' sampler seeds);
  `--ablation-seeds 0` runs the arms other than sft and the recipe at seed 0 only. The sweep trains on seed
  VALIDATION_SEED and judges on held-out pairs of the real set, never on the held-out prompts.

Outputs in --out: results.json, table.md, physical_rate.png, health.png, strip.png (held-out prompt 0, every arm,
seed 0), runs/<arm>-s<seed>-r<real>-k<steps>/ (the training run and its held-out scores). A rerun reuses finished
runs. The last line printed is `physical_rate base=<a> sft=<b> dpo=<c>`.

    python bench/motion_lab.py --sweep --workers 2   # once, before the arms: choose lr and beta (writes SWEEP_FILE)
    python bench/motion_lab.py --workers 2           # the experiment (3 seeds, 256 prompts) on a 2-core machine
    python bench/motion_lab.py --quick               # 1 seed, 16 prompts, 32 real clips, 3 arms, fewer steps
    python bench/motion_lab.py --extra dpo-k1:loss=dpo,negatives=1   # an ablation arm (repeatable)
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
from realdpo.evaluation.intervals import interval  # noqa: E402
from realdpo.lab.evaluate import generate_videos, heldout_prompts, score_videos, write_strip_png  # noqa: E402
from realdpo.lab.model import SAMPLE_GUIDANCE, SAMPLE_STEPS, lab_model_path  # noqa: E402
from realdpo.lab.sets import curated_real_set  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "motion_lab"
SWEEP_FILE = RESULTS / "sweep.json"
RECIPE = "dpo"  # the arm that is "RealDPO" in the last line, named before any run
# The SFT positive control's setting (issue 22: +23 to +27 points at 2000 steps in the prototype).
SFT = {"loss": "sft", "lr": 1e-3, "lora_rank": 16}
# The DPO arms; lr, beta and lora_rank come from the sweep (the official trainer's rank 128).
ARMS = {
    "sft": SFT,
    "dpo": {"loss": "dpo", "neg_latents": "reencode"},
    "dpo-raw": {"loss": "dpo", "neg_latents": "raw"},
    "dpo+sft": {"loss": "dpo+sft", "neg_latents": "reencode"},
    "dpo-r2": {"loss": "dpo", "neg_latents": "reencode", "rounds": 2},
    "edited-real": {"loss": "dpo", "negatives_from": "edited-real"},
    "noised-real": {"loss": "dpo", "negatives_from": "noised-real", "neg_latents": "reencode"},
}
COMMON = dict(batch_size=4, lr_scheduler="constant", negatives=3, neg_steps=SAMPLE_STEPS,
              neg_guidance=SAMPLE_GUIDANCE, neg_batch_size=16, checkpoint_every=0)
# Arms get equal training compute, not equal steps: a DPO step with K = 3 runs the policy (with gradients) on 4
# rows per clip and the reference (forward only, ~1/3 of the cost) on 4 more, about 5x an SFT step's 1 row.
STEPS = 2000  # SFT steps: where the positive control shows its effect clearly
DPO_STEP_COST = 5
# Every arm runs 3 seeds. On 2 cores a DPO run costs 6-9 minutes; `--ablation-seeds 0` runs the arms other than sft and
# the recipe at the first seed only, the cheaper protocol (wall times of each in docs/lab.md).
# 256 held-out prompts: on 64 the SFT control's gain ranged from +8 to +33 points between blocks of prompts, so a
# 64-prompt table could not tell a 10-point effect from none (docs/lab.md, "Results").
FULL = dict(seeds=[0, 1, 2], ablation_seeds=[0, 1, 2], prompts=256, real=128, steps=STEPS, arms=list(ARMS))
QUICK = dict(seeds=[0], ablation_seeds=[0], prompts=16, real=32, steps=300, arms=["sft", "dpo", "dpo-raw"])
# The sweep: the official setting (lr 1e-6, beta 5000, rank 128) and the grid around it, on a validation seed.
VALIDATION_SEED = 100
SWEEP = dict(lrs=[1e-6, 1e-5, 1e-4], betas=[500.0, 5000.0], rank=128, val_pairs=16)
EARLY = 0.2  # a setting whose loss saturates within this fraction of the steps is rejected
STRIP_PROMPT = 0
SCORES_VERSION = 4  # 4: lab v2 metric (render pass and motion checks), per-video flags
SAMPLER = {"steps": SAMPLE_STEPS, "guidance": SAMPLE_GUIDANCE}
METRICS = ("physical_rate", "render_pass", "physical_among_rendered", "residual", "dynamic_degree", "motion_smoothness")


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

    return Console(highlight=False)


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _saved(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _current(scores: dict | None) -> dict | None:
    """Saved scores, unless an older metric or another sampler made them (the base's evaluation is keyed on
    neither its fields nor its folder, so a changed SAMPLE_GUIDANCE must not reuse it)."""
    ok = scores is not None and scores.get("scores_version") == SCORES_VERSION and scores.get("sampler") == SAMPLER
    return scores if ok else None


def dpo_setting() -> dict:
    """The DPO arms' lr, beta and rank as the committed sweep chose them."""
    sweep = _saved(SWEEP_FILE)
    if sweep is None or sweep.get("chosen") is None:
        raise SystemExit(f"no DPO setting chosen yet ({SWEEP_FILE}); run `python bench/motion_lab.py --sweep` first")
    return dict(sweep["chosen"])


def arm_config(overrides: dict, steps: int, setting: dict) -> dict:
    """TrainConfig fields of one arm: COMMON, its steps (`steps` for sft, a DPO_STEP_COST-th of them for the DPO
    losses), 5 % warm-up, the DPO setting (not for sft), the arm's own options."""
    dpo = overrides.get("loss", "dpo") != "sft"
    n = max(1, steps // DPO_STEP_COST) if dpo else steps
    base = {**COMMON, "steps": n, "warmup_steps": max(1, n // 20), **(setting if dpo else {})}
    return {**base, **overrides}


def evaluate(spec, prompts, batch: int = 16) -> tuple[dict, np.ndarray]:
    videos = generate_videos(spec, prompts, steps=SAMPLE_STEPS, guidance=SAMPLE_GUIDANCE, batch_size=batch)
    return {**score_videos(videos), "scores_version": SCORES_VERSION, "sampler": SAMPLER}, videos[STRIP_PROMPT]


def run_dir(out: Path, name: str, seed: int, n_real: int, steps: int) -> Path:
    """A run's folder; `steps` is the arm's own step count."""
    return out / "runs" / f"{name}-s{seed}-r{n_real}-k{steps}"


def health_of(run: Path, steps: int) -> dict:
    """What the run's metrics.jsonl says: accuracy and margin per step, the first step the health monitor called the
    loss saturated (or stuck), and the means over the first EARLY share of the steps and over the last tenth."""
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    rows = [r for r in rows if "accuracy" in r and r.get("accuracy") is not None]
    if not rows:
        return {}
    warned = {}
    for r in rows:
        for kind in (r.get("warnings") or {}):
            warned.setdefault(kind, r["step"])

    def mean(key, sel):
        vals = [r[key] for r in sel if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    early = [r for r in rows if r["step"] <= max(1, int(EARLY * steps))]
    late = rows[-max(1, len(rows) // 10):]
    val = [r for r in rows if r.get("val_accuracy") is not None]
    return {"steps": [r["step"] for r in rows], "accuracy": [r["accuracy"] for r in rows],
            "reward_margin": [r["reward_margin"] for r in rows], "loss": [r["loss"] for r in rows],
            "warnings_at": warned, "saturated_at": warned.get("saturated"),
            "early": {k: mean(k, early) for k in ("accuracy", "reward_margin", "saturated", "loss")},
            "late": {k: mean(k, late) for k in ("accuracy", "reward_margin", "saturated", "loss", "err_diff_w")},
            "val_accuracy": val[-1]["val_accuracy"] if val else None,
            "val_err_diff_w": val[-1].get("val_err_diff_w") if val else None}


def train_run(run: Path, fields: dict, seed: int, shards: list[str], model: Path, out: Path) -> tuple[float, float]:
    from realdpo.training.trainer import train

    t0, c0 = time.perf_counter(), time.process_time()
    cfg = TrainConfig(**fields, shards=shards, out=run / "train", model=model, seed=seed, cache_dir=out / "cache",
                      resume=True)
    cfg.validate()
    train(cfg)
    return time.perf_counter() - t0, time.process_time() - c0


def run_arm(name: str, fields: dict, seed: int, shards: list[str], n_real: int, prompts, out: Path,
            model: Path) -> dict:
    """Train one arm at one seed (or reuse a finished run) and score it on the held-out prompts."""
    from realdpo.generation.sampling import load_lora
    from realdpo.models import load_spec

    steps = fields["steps"]
    run = run_dir(out, name, seed, n_real, steps)
    done = run / f"heldout-{len(prompts.captions)}.json"
    previous = _saved(done)
    if previous is not None and previous.get("fields") != fields:
        raise SystemExit(f"{run} was trained as {name}:{previous.get('fields')}, not {fields}; give the arm another "
                         "name or another --out")
    if (scores := _current(previous)) is not None:
        return scores
    # scored at another prompt count: the training is done, only the scoring is new
    trained = [s for f in run.glob("heldout-*.json") if (s := _saved(f)).get("fields") == fields]
    if trained and (run / "train" / "lora").is_dir():
        t_train, c_train = trained[0]["train_seconds"], trained[0]["train_cpu_seconds"]
    else:
        t_train, c_train = train_run(run, fields, seed, shards, model, out)
    t0, c0 = time.perf_counter(), time.process_time()
    spec = load_spec(model)
    load_lora(spec, run / "train" / "lora")
    metrics, strip = evaluate(spec, prompts)
    metrics.update(arm=name, seed=seed, fields=fields, train_seconds=round(t_train, 1),
                   train_cpu_seconds=round(c_train, 1), eval_seconds=round(time.perf_counter() - t0, 1),
                   eval_cpu_seconds=round(time.process_time() - c0, 1),
                   health=health_of(run / "train", steps) if fields.get("loss") != "sft" else {})
    np.save(run / "strip.npy", strip)
    _write_json(done, metrics)
    return metrics


# ---------------------------------------------------------------------------------------------- summaries

def _flags(rows: list[dict], key: str) -> tuple[list[float], list[int]]:
    """Per-video values of `key` pooled over an arm's seeds, with each video's prompt index (the bootstrap's
    clusters)."""
    vals, prompts = [], []
    for r in rows:
        flags = r["per_video"][key]
        vals += [float(f) for f in flags]
        prompts += list(range(len(flags)))
    return vals, prompts


def paired_difference(pairs: list[tuple[list, list]]) -> dict:
    """Physical rate of a minus b in points, over (a's flags, b's flags) pairs of the same prompts (one pair per
    seed), prompt by prompt, with the 95 % bootstrap interval over prompts."""
    diffs, clusters = [], []
    for a, b in pairs:
        diffs += [float(x) - float(y) for x, y in zip(a, b)]
        clusters += list(range(len(a)))
    lo, hi = interval(diffs, clusters)
    return {"points": 100 * float(np.mean(diffs)), "ci": (100 * lo, 100 * hi)}


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per arm: each metric's mean over seeds (and std), the physical rate and render pass pooled over seeds with a
    95 % bootstrap interval over prompts, and the paired difference in physical rate against base and sft (per
    prompt and seed, the same sampler seed) with its interval."""
    table = {}
    for name, rows in results.items():
        entry = {"n_seeds": len(rows)}
        for key in METRICS:
            vals = [r[key] for r in rows if r.get(key) is not None]
            entry[key] = (float(np.mean(vals)), float(np.std(vals))) if vals else (None, None)
        for key in ("physical", "render_pass"):
            vals, clusters = _flags(rows, key)
            lo, hi = interval(vals, clusters)
            entry[f"{key}_ci"] = (100 * lo, 100 * hi)
        for ref in ("base", "sft"):
            if ref == name or ref not in results:
                continue
            ref_rows = {r.get("seed", 0): r for r in results[ref]}
            # base has one evaluation for every seed
            others = [ref_rows.get(r.get("seed", 0), results[ref][0]) for r in rows]
            entry[f"vs_{ref}"] = paired_difference([(r["per_video"]["physical"], o["per_video"]["physical"])
                                                    for r, o in zip(rows, others)])
        entry["failed"] = {c: float(np.mean([r["failed"][c] for r in rows])) for c in rows[0]["failed"]}
        health = [r.get("health") or {} for r in rows]
        sat = [h.get("saturated_at") for h in health if h]
        if sat:
            entry["saturated_at"] = sat
            entry["late_accuracy"] = float(np.mean([h["late"]["accuracy"] for h in health if h]))
            entry["late_margin"] = float(np.mean([h["late"]["reward_margin"] for h in health if h]))
        table[name] = entry
    return table


def markdown_table(summary: dict[str, dict]) -> str:
    def ms(v, fmt):
        m, s = v
        return "—" if m is None else f"{m:{fmt}} ± {s:{fmt}}"

    def ci(e, key):
        lo, hi = e[key]
        return f"[{lo:.1f}, {hi:.1f}]"

    def diff(e, ref):
        d = e.get(f"vs_{ref}")
        return "—" if d is None else f"{d['points']:+.1f} [{d['ci'][0]:+.1f}, {d['ci'][1]:+.1f}]"

    lines = ["| arm | seeds | physical (%) ↑ | 95 % CI | vs base (points) | vs sft (points) | render pass (%) | "
             "physical among rendered (%) | residual (px) ↓ | dynamic degree (%) | DPO accuracy, last 10 % | "
             "saturated at step |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in summary.items():
        sat = e.get("saturated_at")
        sat = "—" if sat is None else ", ".join("never" if s is None else str(s) for s in sat)
        acc = "—" if "late_accuracy" not in e else f"{e['late_accuracy']:.2f}"
        lines.append(f"| {name} | {e['n_seeds']} | {ms(e['physical_rate'], '.1f')} | {ci(e, 'physical_ci')} | "
                     f"{diff(e, 'base')} | {diff(e, 'sft')} | {ms(e['render_pass'], '.1f')} | "
                     f"{ms(e['physical_among_rendered'], '.1f')} | {ms(e['residual'], '.2f')} | "
                     f"{ms(e['dynamic_degree'], '.1f')} | {acc} | {sat} |")
    return "\n".join(lines)


def bar_chart(summary: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes, (("physical", "physical rate (%) ↑"), ("render_pass", "render pass (%)"))):
        means = [summary[n]["physical_rate" if key == "physical" else key][0] for n in names]
        lo = [m - summary[n][f"{key}_ci"][0] for m, n in zip(means, names)]
        hi = [summary[n][f"{key}_ci"][1] - m for m, n in zip(means, names)]
        bars = ax.bar(range(len(names)), means, yerr=[lo, hi], capsize=3,
                      color=[colors[i % len(colors)] for i in range(len(names))])
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(title, fontsize=9)
    fig.suptitle("motion lab v2: mean over training seeds, 95 % bootstrap interval over prompts", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def health_chart(results: dict[str, list[dict]], path: Path, steps: int) -> None:
    """Implicit-reward accuracy and margin per step of every DPO arm (seed of the first run), the saturation step
    marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in results.items():
        h = (rows[0].get("health") or {}) if rows else {}
        if not h:
            continue
        k = max(1, len(h["steps"]) // 50)  # a running mean over ~2 % of the steps, for legibility

        def smooth(v, k=k):
            return np.convolve(v, np.ones(k) / k, mode="valid")

        line, = a1.plot(h["steps"][k - 1:], smooth(h["accuracy"]), label=name)
        a2.plot(h["steps"][k - 1:], smooth(h["reward_margin"]), color=line.get_color(), label=name)
        if h.get("saturated_at"):
            for ax in (a1, a2):
                ax.axvline(h["saturated_at"], color=line.get_color(), ls=":", lw=1)
    for ax, title in ((a1, "preference accuracy (running mean)"), (a2, "implicit reward margin (running mean)")):
        ax.axvline(EARLY * steps, color="grey", ls="--", lw=1)
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=9)
    a1.legend(fontsize=7)
    fig.suptitle("DPO arms, training seed of the first run; dotted: the health monitor's saturation step, "
                 f"dashed: {EARLY:.0%} of the steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- the sweep

def choose(candidates: list[dict]) -> dict | None:
    """The rule fixed before the sweep ran: reject a setting whose loss saturated (the health monitor's `saturated`
    warning) within the first EARLY share of the steps, or whose held-out pair accuracy at the end is at most 0.55
    (it learned nothing that generalises); of the rest keep the highest held-out pair accuracy (ties: the smaller lr)."""
    ok = [c for c in candidates
          if (c["saturated_at"] is None or c["saturated_at"] > EARLY * c["steps"])
          and c["val_accuracy"] is not None and c["val_accuracy"] > 0.55]
    if not ok:
        return None
    best = max(ok, key=lambda c: (c["val_accuracy"], -c["lr"]))
    return {"lr": best["lr"], "beta": best["beta"], "lora_rank": best["lora_rank"]}


def sweep(args, shards: list[str], model: Path, out: Path, console) -> dict:
    jobs = [(lr, beta) for lr in SWEEP["lrs"] for beta in SWEEP["betas"]]
    steps = (args.steps or STEPS) // DPO_STEP_COST  # the DPO arms' own steps

    def fields(lr, beta):
        return arm_config({**ARMS[RECIPE], "val_pairs": SWEEP["val_pairs"], "val_every": max(1, steps // 10)},
                          steps * DPO_STEP_COST, {"lr": lr, "beta": beta, "lora_rank": SWEEP["rank"]})

    def folder(lr, beta):
        return out / "sweep" / f"lr{lr:g}-b{beta:g}-k{steps}"

    def job(lr, beta):
        run = folder(lr, beta)
        if not (run / "train" / "lora").is_dir():
            train_run(run, fields(lr, beta), VALIDATION_SEED, shards, model, out)

    if args.claims is not None:
        for lr, beta in jobs:
            if _claim(args.claims, f"sweep-{lr:g}-{beta:g}"):
                job(lr, beta)
        return {}
    if args.workers > 1:
        _run_workers(args.workers, args.argv, out, console)
    candidates = []
    for lr, beta in jobs:
        job(lr, beta)
        h = health_of(folder(lr, beta) / "train", steps)
        candidates.append({"lr": lr, "beta": beta, "lora_rank": SWEEP["rank"], "steps": steps,
                           "saturated_at": h.get("saturated_at"), "warnings_at": h.get("warnings_at"),
                           "early": h.get("early"), "late": h.get("late"), "val_accuracy": h.get("val_accuracy"),
                           "val_err_diff_w": h.get("val_err_diff_w")})
        c = candidates[-1]
        console.print(f"lr {lr:g} beta {beta:g}: saturated at {c['saturated_at']}, early accuracy "
                      f"{c['early']['accuracy']:.2f}, last-10% accuracy {c['late']['accuracy']:.2f}, held-out pair "
                      f"accuracy {c['val_accuracy']}", markup=False)
    report = {"about": "DPO setting chosen on validation seed %d (held-out pairs of the real set, never the held-out "
                       "prompts) by bench/motion_lab.py's `choose` rule" % VALIDATION_SEED,
              "model": str(model), "real_clips": args.real_n, "steps": steps, "grid": SWEEP, "early": EARLY,
              "candidates": candidates, "chosen": choose(candidates)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    _write_json(SWEEP_FILE, report)
    console.print(f"chosen: {report['chosen']} (written to {SWEEP_FILE})", markup=False)
    return report


# ---------------------------------------------------------------------------------------------- workers

def arm_seeds(name: str, seeds: list[int], ablation_seeds: list[int]) -> list[int]:
    """base, sft and the recipe run `seeds`; every other arm `ablation_seeds`."""
    return seeds if name in ("sft", RECIPE) else [s for s in ablation_seeds if s in seeds] or seeds[:1]


def _job_order(arms: dict[str, dict], seeds: list[int], ablation_seeds: list[int]) -> list[tuple[str, int]]:
    """Every (arm, seed), arm by arm with the seeds interleaved, the arms that generate negatives first and sft
    last: parallel workers then start on different seeds' round-1 negatives (which the later arms of a seed reuse
    from the cache) and finish on the cheapest runs."""
    order = sorted(arms, key=lambda name: arms[name].get("loss", "dpo") == "sft")
    return [(name, seed) for name in order for seed in arm_seeds(name, seeds, ablation_seeds)]


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


# ---------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out/motion_lab"))
    ap.add_argument("--quick", action="store_true", help="1 seed, 16 prompts, 32 real clips, fewer steps (a preview)")
    ap.add_argument("--sweep", action="store_true", help="choose the DPO arms' lr and beta on the validation seed")
    ap.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2; --quick: 0)")
    ap.add_argument("--ablation-seeds", type=int, nargs="+", help="training seeds of the arms other than sft and the "
                    "recipe (default 0 1 2, those of them in --seeds)")
    ap.add_argument("--prompts", type=int, help="held-out prompts (default 256; --quick: 16)")
    ap.add_argument("--real", type=int, help="real clips (default 128; --quick: 32)")
    ap.add_argument("--steps", type=int, help=f"SFT steps; the DPO arms run a {DPO_STEP_COST}th of them (default {STEPS}; "
                    f"--quick: {QUICK['steps']})")
    ap.add_argument("--arms", nargs="*", help=f"arms to run (default {' '.join(ARMS)}; --quick: {' '.join(QUICK['arms'])})")
    ap.add_argument("--extra", action="append", default=[], help="an extra arm NAME:option=value,... (ablations)")
    ap.add_argument("--model", type=Path, default=None,
                    help="base model folder (default: the committed lab model); one --out holds runs of one model")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--workers", type=int, default=1,
                    help="train and score the runs in this many single-thread processes (2 on a 2-core machine: "
                         "two 2-thread processes would slow each other down); logs in OUT/logs/")
    ap.add_argument("--claims", type=Path, help=argparse.SUPPRESS)  # set for the worker processes
    args = ap.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    preset = QUICK if args.quick else FULL
    seeds = args.seeds or preset["seeds"]
    ablation_seeds = args.ablation_seeds or preset["ablation_seeds"]
    n_prompts, n_real = args.prompts or preset["prompts"], args.real or preset["real"]
    args.real_n = n_real
    steps = args.steps or preset["steps"]
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

    t0 = time.perf_counter()
    shards = curated_real_set(out / f"real-{n_real}", n_real)
    timings["curate_real_set"] = round(time.perf_counter() - t0, 1)
    if args.sweep:
        report = sweep(args, shards, model, out, console)
        if args.claims is None:
            console.print(f"sweep wall time {time.perf_counter() - started:.0f} s", markup=False)
        return report

    from realdpo.models import load_spec

    chosen = {name: ARMS[name] for name in args.arms or preset["arms"]}
    chosen.update(map(_parse_extra, args.extra))
    setting = dpo_setting() if any(o.get("loss", "dpo") != "sft" for o in chosen.values()) else {}
    arms = {name: arm_config(o, steps, setting) for name, o in chosen.items()}
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
        _write_json(base_file, base)
    timings["base_eval"] = round(time.perf_counter() - t0, 1)
    results["base"] = [base]
    console.print(f"base: physical rate {base['physical_rate']:.1f}%, render pass {base['render_pass']:.1f}%")
    if args.claims is not None:  # a worker: run whatever jobs no other worker has claimed, then stop
        for name, seed in _job_order(arms, seeds, ablation_seeds):
            if _claim(args.claims, f"{name}-s{seed}"):
                run_arm(name, arms[name], seed, shards, n_real, prompts, out, model)
        return {}
    if args.workers > 1:
        _run_workers(args.workers, args.argv, out, console)
    for name, fields in arms.items():
        results[name] = []
        for seed in arm_seeds(name, seeds, ablation_seeds):
            r = run_arm(name, fields, seed, shards, n_real, prompts, out, model)
            results[name].append(r)
            timings[f"{name}-s{seed}"] = r.get("train_seconds", 0) + r.get("eval_seconds", 0)
            console.print(f"{name} seed {seed}: physical rate {r['physical_rate']:.1f}%, render pass "
                          f"{r['render_pass']:.1f}%")
            if seed == arm_seeds(name, seeds, ablation_seeds)[0]:
                strips[name] = np.load(run_dir(out, name, seed, n_real, fields["steps"]) / "strip.npy")

    summary = summarize(results)
    table = markdown_table(summary)
    total = round(time.perf_counter() - started, 1)
    total_cpu = round(time.process_time() - cpu_started + _children_cpu_seconds(), 1)
    (out / "table.md").write_text(table + "\n")
    bar_chart(summary, out / "physical_rate.png")
    health_chart(results, out / "health.png", max(1, steps // DPO_STEP_COST))
    write_strip_png(strips, out / "strip.png")
    report = {"protocol": {"model": str(model), "common": COMMON, "steps": steps, "arms": arms, "recipe": RECIPE,
                           "seeds": seeds, "ablation_seeds": ablation_seeds, "prompts": n_prompts, "real_clips": n_real, "sample_steps": SAMPLE_STEPS,
                           "sample_guidance": SAMPLE_GUIDANCE, "dpo_setting": setting},
              "summary": summary, "runs": results, "timings_s": timings, "wall_seconds": total,
              "cpu_seconds": total_cpu, "torch_threads": torch_threads(), "workers": args.workers}
    _write_json(out / "results.json", report)
    console.print(table, markup=False)
    console.print(f"wall time {total:.0f} s, CPU time {total_cpu:.0f} s ({args.workers} workers); outputs in {out}",
                  markup=False)

    def rate(name):
        return f"{summary[name]['physical_rate'][0]:.1f}" if name in summary else "n/a"

    print(f"physical_rate base={rate('base')} sft={rate('sft')} dpo={rate(RECIPE)}")
    return report


if __name__ == "__main__":
    main()
