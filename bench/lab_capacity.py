"""Does more capacity per token let a lab transformer keep its balls? A probe for the motion lab's base model.

The committed lab model loses or recolours a ball in some frame of 97 % of its samples, so the experiment's
physical rate is 0 % for every method (README, "The motion lab"). Longer training of the same transformer moved
per-frame consistency by 8 points in 3000 steps. This probe asks whether a larger transformer does better *at an
equal number of steps*, side by side with the committed architecture under one protocol:

- every variant trains the transformer and text encoder from a fresh seed-0 initialisation, on the committed
  model's VAE and the same `--clips` web-mix clips (stage 2's draw), for `--steps` steps of stage 3's loss with
  its batch, learning rate, schedule, caption dropout and EMA (`realdpo.lab.build.train_transformer`);
- variants differ only in the transformer: `w128p4` (the committed one: 4 heads of 32, 4x4 patches), `w256p4`
  (8 heads of 32), `w128p2` (2x2 patches: 4x the tokens);
- each is scored on lab_sdedit's validation draw (held-out seed 1, not the experiment's prompts) at the given
  SDEdit strengths, and its training seconds per step are recorded (the ratio to w128p4 is what every arm of the
  experiment would cost more).

Written to OUT: one folder per variant, step count and clip count (its pipeline, resumable checkpoints while it
trains), results.json and table.md. A rerun reuses finished variants. Variants trained in parallel processes
share the machine, so their seconds per step in results.json are inflated; `--time-only` times one step of every
variant side by side in one process (OUT/step_seconds.json), which is the ratio to quote.

    python bench/lab_capacity.py [--variants w128p4 w256p4 w128p2] [--steps 600] [--clips 1000] [--threads 2]
    python bench/lab_capacity.py --time-only
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab_sdedit  # noqa: E402

from realdpo.lab.model import TRANSFORMER_CONFIG, lab_model_path  # noqa: E402

VARIANTS = {"w128p4": {}, "w256p4": {"num_attention_heads": 8}, "w128p2": {"patch_size": 2}}


def train_variant(name: str, folder: Path, args) -> dict:
    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    from realdpo.configs.lab import LabBuildConfig
    from realdpo.lab.build import _save_atomic, encode_data, train_transformer
    from realdpo.lab.model import untrained_pipeline
    from realdpo.lab.world import derive_seed
    from realdpo.models import load_spec
    from realdpo.models.common import quiet_progress

    cfg = LabBuildConfig(steps=args.steps, clips=args.clips)
    init = folder / "init"
    if not (init / "model_index.json").is_file():
        pipe = untrained_pipeline(derive_seed("lab-build-init", cfg.seed) % (1 << 31))
        torch.manual_seed(derive_seed("lab-capacity-transformer", cfg.seed) % (1 << 31))
        pipe.transformer = CogVideoXTransformer3DModel(**{**TRANSFORMER_CONFIG, **VARIANTS[name]})
        with quiet_progress():
            pipe.vae = AutoencoderKLCogVideoX.from_pretrained(lab_model_path() / "vae")
            _save_atomic(lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True), init)
    spec = load_spec(init)
    data = args.out / f"data-{args.clips}.safetensors"
    if not data.is_file():
        encode_data(cfg, spec, data, args.clips, "lab-build-data")
    t0 = time.perf_counter()
    losses = train_transformer(cfg, spec, data, folder / "checkpoints", args.steps, cfg.lr)
    seconds = time.perf_counter() - t0
    with quiet_progress():
        _save_atomic(lambda tmp: spec.pipeline().save_pretrained(tmp, safe_serialization=True), folder / "model")
    params = sum(p.numel() for p in spec.transformer.parameters())
    return {"transformer_params": params, "train_seconds": round(seconds, 1), **losses}


def time_steps(names: list[str], repeats: int = 6) -> dict:
    """Seconds per training step (batch 16, forward + backward + AdamW, transformer only) of each variant, side by
    side in this process on random latents: the median of `repeats` steps after one warm-up step."""
    import torch
    from diffusers import CogVideoXTransformer3DModel

    from realdpo.models import load_spec

    spec = load_spec(lab_model_path())
    x0, image = torch.randn(16, 17, 8, 16, 16), torch.randn(16, 17, 8, 16, 16)
    cond = {"prompt_embeds": torch.randn(16, 96, 64), "image_latents": image}
    seconds = {}
    for name in names:
        torch.manual_seed(0)
        model = CogVideoXTransformer3DModel(**{**TRANSFORMER_CONFIG, **VARIANTS[name]})
        spec.transformer, spec._rotary_cache = model, {}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            t = spec.sample_timesteps(16, 0.0, 1.0)
            spec.per_sample_error(model, x0, torch.randn_like(x0), t, cond).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        seconds[name] = float(sorted(times[1:])[repeats // 2])
        print(f"{name}: {seconds[name]:.2f} s/step ({seconds[name] / seconds[names[0]]:.2f}x {names[0]})", flush=True)
    return seconds


def main(argv: list[str] | None = None) -> dict:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.4, 1.0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("lab_capacity"))
    ap.add_argument("--time-only", action="store_true",
                    help="only time a training step of every variant, side by side (OUT/step_seconds.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.time_only:
        seconds = time_steps(list(VARIANTS))
        (args.out / "step_seconds.json").write_text(json.dumps({"threads": args.threads, **seconds}, indent=1))
        return seconds
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in args.variants:
        key = f"{name}-k{args.steps}-c{args.clips}"  # also its folder: a rerun at other steps must not resume it
        if key in results:
            continue
        row = {"variant": name, "steps": args.steps, "clips": args.clips, "threads": args.threads,
               **train_variant(name, args.out / key, args)}
        row["seconds_per_step"] = row["train_seconds"] / args.steps
        t0 = time.perf_counter()
        row["validation"] = lab_sdedit.main(["--model", str(args.out / key / "model"), "--prompts",
                                             str(args.prompts), "--strengths", *map(str, args.strengths)])["rows"]
        row["score_seconds"] = round(time.perf_counter() - t0, 1)
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}  # another process's rows
        results[key] = row
        results_path.write_text(json.dumps(results, indent=1))
    write_table(results, args.out / "table.md")
    return results


def write_table(results: dict, path: Path) -> None:
    base = {(r["steps"], r["clips"]): r for r in results.values() if r["variant"] == "w128p4"}
    lines = ["| variant | steps | params | s/step | x w128p4 | loss (last 200) | strength | physical (%) | "
             "consistent frames (%) | balls found (%) |", "|---" * 10 + "|"]
    for r in sorted(results.values(), key=lambda r: (r["steps"], r["clips"], r["variant"] != "w128p4", r["variant"])):
        ref = base.get((r["steps"], r["clips"]))
        ratio = f"{r['seconds_per_step'] / ref['seconds_per_step']:.2f}" if ref else "-"
        for v in r["validation"]:
            if v["strength"] == 0.0:
                continue
            lines.append(f"| {r['variant']} | {r['steps']} | {r['transformer_params'] / 1e6:.2f} M | "
                         f"{r['seconds_per_step']:.2f} | {ratio} | {r['transformer_loss_last200']:.4f} | "
                         f"{v['strength']:.1f} | {v['physical_rate']:.1f} | {v['consistent_frames']:.1f} | "
                         f"{v['balls_found']:.1f} |")
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
