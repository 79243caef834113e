"""The device check: turn bench/memory.py's predictions into measurements in one short run on one GPU.

    python bench/gpu_check.py OUT_DIR                 # one H100: about 5-7 minutes from a bare machine
    python bench/gpu_check.py OUT_DIR --dry-run       # the same code on the CPU, depth 1, tiny sizes (< 1 min)
    python bench/gpu_check.py --predict bench/results/gpu_check_predictions.json   # CPU: the predictions only

Every model is built with random weights at its true configuration (`realdpo.models.configs`, through
bench/memory.py's builders; no download), bf16. Memory is `torch.cuda.max_memory_allocated` above what was
allocated before the section; times are wall seconds with `torch.cuda.synchronize()` around them. Sections, in
order of priority (a section that would not fit in `--budget-s` is skipped and says so):

1. memory:CogVideoX-5B-I2V: peak of one LoRA RealDPO step at 49x480x720, K=3, rank 16, gradient checkpointing,
   `--chunk-size 1` (streamed), text encoder and VAE off the device, AdamW state already allocated (the steady
   state); and the official-style loop (bench/dpo_step.py's: a frozen bf16 copy as reference, 4 passes and one
   backward per negative, text encoder and VAE resident: held as one buffer of their exact size). Beside each,
   bench/memory.py's prediction for the same configuration (read from --predictions if that file exists, else
   computed on the CPU by four `--predict` processes running beside the GPU work).
2. step-time: realdpo's step against the official-style loop at CogVideoX-5B-I2V's true width and token count with
   --timing-layers blocks on both sides; one warm-up step each, then --repeat steps per side, alternating, with the
   per-pass breakdown of bench/dpo_step.py's Clock.
3. negatives: sampler steps per second of CogVideoX-5B-I2V negatives (the family's pipeline through
   `spec.generate_latents`, guidance batched as the pipeline batches it) at batch 1 and 4.
4. memory:Wan2.2-TI2V-5B: as 1, at 121x704x1280.

Writes OUT_DIR/gpu_check.json (everything, with the environment) and OUT_DIR/gpu_check.md (the short table).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import dpo_step  # noqa: E402  (the official loop, LoRA, per-pass clock)
import memory  # noqa: E402  (true configurations, spec and batch builders, the meta-device prediction)

GiB = 2**30
BF16 = torch.bfloat16
COG, WAN = "CogVideoX-5B-I2V", "Wan2.2-TI2V-5B"
SECTIONS = (f"memory:{COG}", "step-time", "negatives", f"memory:{WAN}")
# seconds a section needs on one H100 (estimates from the FLOPs of each step; a section starts only if they fit)
NEEDS = {f"memory:{COG}": 100, "step-time": 70, "negatives": 90, f"memory:{WAN}": 150}
# --dry-run: depth 1, two heads (true head dim, patching, text width), tiny videos
DRY_SIZE = {"cogvideox": (9, 64, 96), "wan": (9, 128, 128)}
DRY_MODEL = {"cogvideox": dict(num_attention_heads=2, num_layers=1), "wan": dict(num_attention_heads=2, ffn_dim=256,
                                                                                  num_layers=1)}


def model(name: str, dry: bool, num_layers: int | None = None) -> dict:
    """bench/memory.py's description of `name`; in a dry run depth 1, two heads and a tiny video."""
    m = dict(memory.MODELS[name])
    tr = dict(m["transformer"])
    if dry:
        m["size"], m["text"] = DRY_SIZE[m["family"]], 16
        tr.update(DRY_MODEL[m["family"]])
        if m["family"] == "cogvideox":
            tr["max_text_seq_length"] = 16
    if num_layers is not None:
        tr["num_layers"] = num_layers
    if m["family"] == "cogvideox":  # CogVideoX's learned position table is sized by the training video
        f, h, w = m["size"]
        tr.update(sample_frames=f, sample_height=h // 8, sample_width=w // 8)
    m["transformer"] = tr
    return m


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Peak:
    """Peak bytes allocated inside the block above what was allocated at its start: the CUDA allocator's counter,
    or on the CPU the live bytes of every tensor made (bench/dpo_step.py's `TensorTracker`)."""

    def __init__(self, device: torch.device):
        self.device, self.bytes = device, 0

    def __enter__(self):
        release(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            from realdpo.memory import TensorTracker

            self.tracker = TensorTracker().__enter__()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            sync(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self.tracker.__exit__(*exc)
            self.bytes = self.tracker.peak
        return False


def steady_adamw(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW over the LoRA with its moments already allocated, as from the second step of a run on."""
    opt = torch.optim.AdamW(params, lr=1e-5)
    for p in params:
        opt.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    return opt


def side_runner(m: dict, side: str, device: torch.device, clock=None):
    """Transformer, spec, LoRA and batch of one side, as bench/memory.py's simulation builds them."""
    tr = memory.build_transformer(m, device, BF16)
    spec = memory.make_spec(m, tr, device, BF16)
    base_copy = copy.deepcopy(tr).eval() if side == "official" else None
    params = dpo_step.add_lora(spec, 16)
    tr.enable_gradient_checkpointing()
    tr.train()
    data = memory.make_batch(m, spec, device, BF16, k=3)
    runner = dpo_step.Ours(spec, data, 5000.0, 1, False, clock) if side == "realdpo" \
        else dpo_step.Official(spec, data, 5000.0, base_copy, clock)
    return runner, params


def step_memory(m: dict, side: str, device: torch.device) -> dict:
    """Peak of building one side and running one steady-state step (step + AdamW update)."""
    encoders = None
    try:
        with Peak(device) as peak:
            runner, params = side_runner(m, side, device)
            if side == "official" and device.type == "cuda":  # its script keeps text encoder and VAE on the device
                encoders = torch.empty(encoder_bytes(m), dtype=torch.uint8, device=device)
            opt = steady_adamw(params)
            sync(device)
            t0 = time.perf_counter()
            loss = runner.step()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            seconds = time.perf_counter() - t0
    except torch.cuda.OutOfMemoryError as e:
        return {"error": f"out of memory: {str(e).splitlines()[0]}"}
    finally:
        runner = params = opt = encoders = None  # noqa: F841  (freed before the next side is measured)
        release(device)
    return {"peak_bytes": peak.bytes, "peak_gib": peak.bytes / GiB, "step_s": seconds,
            "loss": float(loss), "loss_finite": math.isfinite(float(loss))}


def encoder_bytes(m: dict) -> int:
    comp = memory.component_bytes(m)
    return comp["text_encoder"] + comp["vae"]


def predict(m: dict, side: str, encoders: bool = True) -> float:
    """bench/memory.py's prediction (bytes) for one side: its meta-device step + AdamW state (+ for the official
    loop the resident text encoder and VAE; a dry run holds none, on either side)."""
    r = memory.simulate(m, side)
    return r["peak"] + r["adam"] + (encoder_bytes(m) if side == "official" and encoders else 0)


def section_memory(name: str, args, device) -> dict:
    m = model(name, args.dry_run)
    out = {"size": list(m["size"]), "tokens_per_row": memory.tokens(m), "num_layers": m["transformer"]["num_layers"]}
    for side in ("realdpo", "official"):
        out[side] = step_memory(m, side, device)
    if "peak_bytes" in out["realdpo"] and "peak_bytes" in out["official"]:
        out["mem_ratio"] = out["realdpo"]["peak_bytes"] / out["official"]["peak_bytes"]
    return out


def attach_predictions(result: dict, predictions: dict[str, float]) -> None:
    """Put each prediction (bytes, keyed "model/side") beside its measurement."""
    for name in (COG, WAN):
        r = result["sections"].get(f"memory:{name}")
        for side in ("realdpo", "official"):
            if not isinstance(r, dict) or side not in r:
                continue
            pred = predictions.get(f"{name}/{side}")
            if pred is None:
                continue
            r[side]["predicted_bytes"], r[side]["predicted_gib"] = pred, pred / GiB
            if "peak_bytes" in r[side]:
                r[side]["measured_over_predicted"] = r[side]["peak_bytes"] / pred


PREDICTION_KEYS = tuple(f"{name}/{side}" for name in (COG, WAN) for side in ("realdpo", "official"))


def start_predictions(out: Path, dry_run: bool) -> list[tuple[Path, subprocess.Popen]]:
    """bench/memory.py's predictions run on the CPU (meta tensors, ~1-2 min each at true size) in parallel
    processes while the GPU measures; one process per key (in a dry run, of the dry run's tiny models)."""
    procs = []
    for i, key in enumerate(PREDICTION_KEYS):
        path = out / f"prediction_{i}.json"
        cmd = [sys.executable, __file__, "--predict", str(path), "--keys", key] + (["--dry-run"] if dry_run else [])
        procs.append((path, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    return procs


def collect_predictions(procs, deadline: float) -> dict[str, float]:
    found = {}
    for path, proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            proc.kill()
            continue
        if path.is_file():
            found.update(json.loads(path.read_text())["bytes"])
            path.unlink()
    return found


def section_step_time(args, device) -> dict:
    m = model(COG, args.dry_run, num_layers=1 if args.dry_run else args.timing_layers)
    clocks = {side: dpo_step.Clock(device) for side in dpo_step.SIDES}
    runners = {side: side_runner(m, side, device, clocks[side]) for side in dpo_step.SIDES}
    for runner, params in runners.values():  # warm-up
        runner.step()
        for p in params:
            p.grad = None
    steps = {side: [] for side in dpo_step.SIDES}
    for i in range(args.repeat):
        for side in (dpo_step.SIDES if i % 2 == 0 else dpo_step.SIDES[::-1]):
            runner, params = runners[side]
            clock = clocks[side]
            clock.reset()
            sync(device)
            t0 = time.perf_counter()
            runner.step()
            sync(device)
            steps[side].append({"wall_s": time.perf_counter() - t0,
                                "passes": {k: clock.seconds[k] for k in clock.KINDS}})
            for p in params:
                p.grad = None
    runners = None
    release(device)
    med = {s: statistics.median(x["wall_s"] for x in steps[s]) for s in steps}
    passes = {s: {k: statistics.median(x["passes"][k] for x in steps[s]) for k in dpo_step.Clock.KINDS} for s in steps}
    return {"num_layers": m["transformer"]["num_layers"], "tokens_per_row": memory.tokens(m), "size": list(m["size"]),
            "median_s": med, "time_ratio": med["realdpo"] / med["official"],
            "paired_ratios": [a["wall_s"] / b["wall_s"] for a, b in zip(steps["realdpo"], steps["official"])],
            "passes_median_s": passes, "steps": steps}


def section_negatives(args, device) -> dict:
    """Sampler steps per second of CogVideoX-5B-I2V negatives through the spec (guidance batched by the pipeline)."""
    from realdpo.models.builders import build_pipeline
    from realdpo.models.cogvideox import CogVideoXSpec

    m = model(COG, args.dry_run)
    frames, height, width = m["size"]
    pipe = build_pipeline("CogVideoX-5b-I2V", num_layers=1, transformer_overrides={
        k: m["transformer"][k] for k in ("sample_frames", "sample_height", "sample_width")})
    pipe.transformer = memory.build_transformer(m, device, BF16)  # full depth, built on the device
    pipe.to(device=device, dtype=BF16)
    spec = CogVideoXSpec.from_pipeline(pipe, path=tempfile.mkdtemp())
    out = {"num_layers": m["transformer"]["num_layers"], "size": [frames, height, width], "guidance": 6.0,
           "steps_per_call": args.neg_steps}
    g = torch.Generator().manual_seed(0)
    for b in args.neg_batches:
        images = torch.rand(b, 3, height, width, generator=g) * 2 - 1
        cond = {"prompt_embeds": torch.randn(b, m["text"], 4096, generator=g).to(device, BF16)}
        cond.update(spec.encode_first_frames(images.to(device, BF16), frames))
        negative = {"prompt_embeds": torch.zeros(1, m["text"], 4096, device=device, dtype=BF16)}
        marks = []

        def on_step(i, n, marks=marks):
            sync(device)
            marks.append(time.perf_counter())
        sync(device)
        marks.append(time.perf_counter())
        spec.generate_latents([""] * b, cond, num_frames=frames, height=height, width=width, steps=args.neg_steps,
                              guidance=6.0, seeds=list(range(b)), negative_cond=negative, callback=on_step)
        per_step = [b2 - a for a, b2 in zip(marks, marks[1:])][1:]  # the first step is the warm-up
        out[f"batch_{b}"] = {"step_s": per_step, "median_step_s": statistics.median(per_step),
                             "sampler_steps_per_s": 1 / statistics.median(per_step),
                             "videos_steps_per_s": b / statistics.median(per_step)}
    pipe = spec = None
    release(device)
    return out


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   gpu_memory_gib=torch.cuda.get_device_properties(device).total_memory / GiB)
    return env


def table(result: dict) -> str:
    """The short markdown table of the measured-vs-predicted peaks, the step time and the sampler speed."""
    lines = ["| check | realdpo | official-style loop | ratio |", "| --- | --- | --- | --- |"]
    for name in (COG, WAN):
        r = result["sections"].get(f"memory:{name}")
        if not isinstance(r, dict) or "realdpo" not in r:
            lines.append(f"| {name} peak | {r} | | |")
            continue

        def cell(x):
            if "peak_gib" not in x:
                return x.get("error", "?")
            unit, scale = ("GiB", 1) if x["peak_gib"] >= 1 else ("MiB", 1024)  # MiB: the dry run's tiny models
            pred = f" (predicted {x['predicted_gib'] * scale:.1f})" if "predicted_gib" in x else ""
            return f"{x['peak_gib'] * scale:.1f} {unit}{pred}"
        ratio = f"{r['mem_ratio']:.3f}" if "mem_ratio" in r else ""
        lines.append(f"| {name} peak, {'x'.join(map(str, r['size']))}, {r['tokens_per_row']} tokens/row | "
                     f"{cell(r['realdpo'])} | {cell(r['official'])} | {ratio} |")
    st = result["sections"].get("step-time")
    if isinstance(st, dict):
        lines.append(f"| step time, {st['num_layers']} layers, {st['tokens_per_row']} tokens/row (median of "
                     f"{len(st['paired_ratios'])}) | {st['median_s']['realdpo']:.3f} s | {st['median_s']['official']:.3f} s"
                     f" | {st['time_ratio']:.3f} |")
    else:
        lines.append(f"| step time | {st} | | |")
    neg = result["sections"].get("negatives")
    if isinstance(neg, dict):
        for k, v in neg.items():
            if k.startswith("batch_"):
                lines.append(f"| negatives, {k.replace('_', ' ')}: sampler steps/s | {v['sampler_steps_per_s']:.3f} | | |")
    else:
        lines.append(f"| negatives | {neg} | | |")
    return "\n".join(lines) + "\n"


def write(out: Path, result: dict) -> None:
    """Written after every section (atomically), so a run stopped by its time limit keeps what it measured."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_check.json", json.dumps(result, indent=1)), ("gpu_check.md", table(result))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="?", help="Folder for gpu_check.json and gpu_check.md.")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, one thread, depth 1, two heads, tiny videos, one repeat: the same code in < 1 minute.")
    ap.add_argument("--predict", type=Path, default=None,
                    help="Only compute bench/memory.py's predictions for the measured configurations into this JSON.")
    ap.add_argument("--keys", nargs="+", default=list(PREDICTION_KEYS), choices=PREDICTION_KEYS,
                    help="With --predict: which predictions.")
    ap.add_argument("--predictions", type=Path, default=ROOT / "bench" / "results" / "gpu_check_predictions.json",
                    help="Predictions computed before (--predict); when absent they are computed during the run.")
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--budget-s", type=float, default=420.0, help="Skip sections that would end after this.")
    ap.add_argument("--repeat", type=int, default=3, help="Timed steps per side after the warm-up (step-time).")
    ap.add_argument("--timing-layers", type=int, default=8, help="Blocks on both sides in step-time.")
    ap.add_argument("--neg-steps", type=int, default=4, help="Sampler steps per negatives call (the first is warm-up).")
    ap.add_argument("--neg-batches", type=int, nargs="+", default=[1, 4])
    args = ap.parse_args()
    if args.predict:
        torch.set_num_threads(1)
        # a dry run holds no text encoder or VAE on either side
        preds = {key: predict(model(key.split("/")[0], args.dry_run), key.split("/")[1], encoders=not args.dry_run)
                 for key in args.keys}
        args.predict.parent.mkdir(parents=True, exist_ok=True)
        args.predict.write_text(json.dumps({"bytes": preds, "gib": {k: v / GiB for k, v in preds.items()}}, indent=1))
        print(json.dumps({k: round(v / GiB, 2) for k, v in preds.items()}))
        return 0
    if args.out is None:
        ap.error("give the output folder")
    start = time.perf_counter()
    if args.dry_run:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        args.neg_batches, args.neg_steps, args.repeat = [1, 2], 2, 1
    elif not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --dry-run to run the same code on the CPU", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
    predictions, procs = {}, []
    args.out.mkdir(parents=True, exist_ok=True)
    if args.predictions.is_file() and not args.dry_run:
        predictions = json.loads(args.predictions.read_text())["bytes"]
    else:
        procs = start_predictions(args.out, args.dry_run)
    result = {"environment": environment(device), "dry_run": args.dry_run, "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "sections": {}}
    for section in args.sections:
        elapsed = time.perf_counter() - start
        if not args.dry_run and elapsed + NEEDS[section] > args.budget_s:
            result["sections"][section] = f"skipped: {elapsed:.0f} s spent, needs ~{NEEDS[section]} s of {args.budget_s:.0f}"
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        print(f"[{time.perf_counter() - start:6.1f}s] {section} ...", flush=True)
        if section.startswith("memory:"):
            r = section_memory(section.split(":", 1)[1], args, device)
        elif section == "step-time":
            r = section_step_time(args, device)
        else:
            r = section_negatives(args, device)
        r["section_s"], r["section_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        result["sections"][section] = r
        attach_predictions(result, predictions)
        result["total_s"] = time.perf_counter() - start
        write(args.out, result)
    if procs:  # wait for the predictions at most until the budget ends
        predictions = collect_predictions(procs, start + (600 if args.dry_run else args.budget_s + 30))
    attach_predictions(result, predictions)
    result["total_s"] = time.perf_counter() - start
    write(args.out, result)
    print(table(result), end="")
    print(f"total {result['total_s']:.1f} s; wrote {args.out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
