"""The RealDPO step (realdpo.method.step, as the trainer runs it) against a faithful re-implementation of the official loop.

Same CogVideoX transformer (random weights, built from a config), same LoRA, same batch (B real clips, K = 3 negatives),
same timesteps and noise:

- realdpo: reference = the same module with its LoRA adapters disabled; the policy runs once on [x_w, x_l^1..x_l^K]
  with gradients, the reference once without; chunks of --chunk-size rows are streamed (each backpropagated before
  the next runs; in chunks of one row each loser row's LoRA gradient is set aside until its coefficient is known,
  as the trainer does in one process, or with --winner-pass a no-grad winner pass gives the coefficients first, as
  it does in several), or with --keep-graph kept until one backward.
- official: a separate frozen full copy of the transformer as reference; for each negative the policy and the
  reference each run on the winner and on that loser (4 passes), then one backward per negative.

Peak memory: the high-water mark of tensor memory allocated while a side builds its model (weights, LoRA, reference
copy) and runs its first step: torch.cuda.max_memory_allocated on CUDA; on the CPU the live bytes of every tensor
made (`realdpo.memory.TensorTracker`, which bench/memory.py's check finds equal to the allocator's own events on
these models), so it counts weights, the reference copy, activations and gradients, whatever else runs on the machine. That first step is also the warm-up; time is then the median
of --repeat further steps per side, the sides alternating. The last line printed is `time_ratio=<x> mem_ratio=<y>`
for the last size.

Sizes: `small` and `medium` are toy widths (224 and 256 tokens per row), where the weights decide the memory ratio;
`4k-tokens` runs 4,516 tokens per row (13x30x44 latents + 226 text tokens, CogVideoX's layout: head dim 64, T5 text
width 4096, rotary positions) at width 1024 with 2 layers, where activations decide it; `4k-tokens-narrow` the same
tokens at width 256 (a step in minutes of CPU time, not tens of minutes, on a shared machine). CogVideoX-5B's own width (3072)
at this token count takes over a minute per row-pass on a CPU core; bench/memory.py predicts the real models.

    python bench/dpo_step.py                      # small, medium, 4k-tokens-narrow, 3 repeats
    python bench/dpo_step.py --sizes 4k-tokens    # width 1024: ~2-4 CPU min per step
    python bench/dpo_step.py --sizes cogvideox-2b  # CogVideoX-2B's real transformer config (needs a GPU)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name -> (transformer config overrides, latent frames, latent height, latent width, text tokens)
SIZES = {
    "warmup": (dict(num_attention_heads=2, attention_head_dim=16, num_layers=1, time_embed_dim=32,
                    text_embed_dim=32, max_text_seq_length=8), 3, 4, 4, 8),
    "small": (dict(num_attention_heads=4, attention_head_dim=32, num_layers=4, time_embed_dim=128,
                   text_embed_dim=128, max_text_seq_length=32), 3, 16, 16, 32),
    "medium": (dict(num_attention_heads=8, attention_head_dim=64, num_layers=8, time_embed_dim=256,
                    text_embed_dim=256, max_text_seq_length=64), 3, 16, 16, 64),
    "4k-tokens": (dict(num_attention_heads=16, attention_head_dim=64, num_layers=2, time_embed_dim=512,
                       text_embed_dim=4096, max_text_seq_length=226, use_rotary_positional_embeddings=True),
                  13, 30, 44, 226),
    # the same 4,516 tokens per row at width 256 (4 heads of 64): a quarter of the width, so ~8x cheaper on a CPU
    "4k-tokens-narrow": (dict(num_attention_heads=4, attention_head_dim=64, num_layers=2, time_embed_dim=512,
                              text_embed_dim=4096, max_text_seq_length=226, use_rotary_positional_embeddings=True),
                         13, 30, 44, 226),
    # CogVideoX-2B (THUDM/CogVideoX-2b transformer/config.json), 49 frames at 480x720
    "cogvideox-2b": (dict(num_attention_heads=30, attention_head_dim=64, num_layers=30, time_embed_dim=512,
                          text_embed_dim=4096, max_text_seq_length=226), 13, 60, 90, 226),
}
BASE = dict(in_channels=16, out_channels=16, patch_size=2, temporal_compression_ratio=4, sample_frames=49,
            sample_height=60, sample_width=90, use_rotary_positional_embeddings=False, flip_sin_to_cos=True,
            freq_shift=0, dropout=0.0, attention_bias=True, activation_fn="gelu-approximate", timestep_activation_fn="silu",
            norm_elementwise_affine=True, norm_eps=1e-5, spatial_interpolation_scale=1.875,
            temporal_interpolation_scale=1.0)


def build(size: str, device: torch.device, dtype: torch.dtype, checkpointing: bool):
    """A CogVideoX spec over a random-weight transformer (no VAE or text encoder needed for the step)."""
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    from realdpo.models.cogvideox import CogVideoXSpec
    from realdpo.models.tiny import COGVIDEOX_SCHEDULER

    overrides, f, h, w, text = SIZES[size]
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype on its device: no fp32 copy on the way
    try:
        with torch.device(device):
            tr = CogVideoXTransformer3DModel(**{**BASE, **overrides, "sample_height": h, "sample_width": w})
    finally:
        torch.set_default_dtype(default)
    tr.requires_grad_(False)
    if checkpointing:
        tr.enable_gradient_checkpointing()
    sched = CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER)
    spec = CogVideoXSpec.__new__(CogVideoXSpec)  # the real per_sample_error, without loading a pipeline folder
    spec.transformer, spec.task, spec.device, spec.dtype = tr, "t2v", device, dtype
    spec.alphas_cumprod, spec.num_train_timesteps = sched.alphas_cumprod.float(), 1000
    spec._rotary_cache = {}
    spec.scale_spatial = 8  # CogVideoXSpec._rotary takes the pipeline's rotary helper: give it just that
    helper = functools.partial(CogVideoXPipeline._prepare_rotary_positional_embeddings,
                               SimpleNamespace(vae_scale_factor_spatial=8, transformer=tr))
    spec.pipeline = lambda: SimpleNamespace(_prepare_rotary_positional_embeddings=helper)
    latent = (f, 16, h, w)
    return spec, latent, (text, overrides["text_embed_dim"])


def add_lora(spec, rank: int) -> list[torch.nn.Parameter]:
    from peft import LoraConfig

    spec.transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True,
                                            target_modules=spec.lora_target_modules))
    params = [p for p in spec.transformer.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    with torch.no_grad():  # a trained adapter: policy != reference
        for n, p in spec.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1e-3)
    return params


def batch(spec, latent, text, b: int, k: int, device, dtype):
    g = torch.Generator().manual_seed(1)
    winners = torch.randn(b, *latent, generator=g).to(device)
    losers = torch.randn(b, k, *latent, generator=g).to(device)
    noise = torch.randn(spec.noise_shape((b, *latent)), generator=g).to(device)  # (CogVideoX 1.5: its padding frame)
    t = spec.sample_timesteps(b, 0.0, 0.5, generator=g).to(device)
    cond = {"prompt_embeds": torch.randn(b, *text, generator=g).to(device, dtype)}
    return winners, losers, noise, t, cond


class Clock:
    """Wall time and rows of each kind of pass, summed over a step (CUDA-synchronised around each pass).

    Kinds: "policy forward" (with gradients), "policy forward, no grad" (realdpo's winner pass for the loss
    coefficients), "reference forward", "backward" (with gradient checkpointing it recomputes each block's forward).
    """

    KINDS = ("policy forward", "policy forward, no grad", "reference forward", "backward")

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.KINDS, 0.0)
        self.cpu_seconds = dict.fromkeys(self.KINDS, 0.0)  # this process's CPU time: steadier on a shared machine
        self.rows = dict.fromkeys(self.KINDS, 0)
        self.calls = dict.fromkeys(self.KINDS, 0)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def part(self, kind: str, rows: int):
        self.sync()
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.sync()
            self.seconds[kind] += time.perf_counter() - t0
            self.cpu_seconds[kind] += time.process_time() - c0
            self.rows[kind] += rows
            self.calls[kind] += 1


class _TimedReference:
    """The reference with its passes timed (rows counted as they are taken)."""

    def __init__(self, ref, clock: Clock):
        self.ref, self.clock = ref, clock

    def errors_chunked(self, spec, chunks):
        chunks = list(chunks)
        with self.clock.part("reference forward", sum(c[0].shape[0] for c in chunks)):
            return self.ref.errors_chunked(spec, chunks)


class Ours:
    name = "realdpo"

    def __init__(self, spec, data, beta, chunk, keep_graph, clock: Clock | None = None, winner_pass: bool = False):
        from realdpo.method.reference import DisabledAdapterReference
        from realdpo.method.step import ErrorModel, build_inputs

        self.spec, self.beta, self.chunk, self.keep_graph, self.clock = spec, beta, chunk, keep_graph, clock
        # as the trainer runs LoRA in one process: loser rows' gradients set aside, no no-grad winner pass
        self.loser_grads = None if winner_pass else [p for p in spec.transformer.parameters() if p.requires_grad]
        self.policy, self.ref = ErrorModel(spec, spec.transformer), DisabledAdapterReference(spec.transformer)
        winners, losers, noise, t, cond = data
        self.inputs = build_inputs(winners, losers, cond, noise, t)

    def step(self):
        from realdpo.method.step import preference_step

        policy, ref, backward = self.policy, self.ref, torch.Tensor.backward
        if self.clock is not None:
            clock, pending = self.clock, [0]  # rows forwarded with gradients since the last backward

            def policy(*a):
                grad = torch.is_grad_enabled()
                pending[0] += a[0].shape[0] if grad else 0
                with clock.part("policy forward" if grad else "policy forward, no grad", a[0].shape[0]):
                    return self.policy(*a)

            def backward(loss):
                with clock.part("backward", pending[0]):
                    loss.backward()
                pending[0] = 0

            ref = _TimedReference(self.ref, clock)
        # raw (sum, count) statistics: no host read, so the step also runs on meta tensors (bench/memory.py)
        total, count = preference_step(policy, ref, self.spec, self.inputs, kind="dpo", beta=self.beta,
                                       chunk_size=self.chunk, keep_graph=self.keep_graph, backward=backward,
                                       raw_stats=True, loser_grads=self.loser_grads)["loss"]
        return total / count


class Official:
    """The official loop: a separate frozen reference copy; per negative 4 passes and one backward.

    Its loss is the official trainer's: the SUM over the K negatives of the per-negative DPO loss (each averaged
    over the batch), so its value and gradient are K times realdpo's mean over negatives.
    """

    name = "official"

    def __init__(self, spec, data, beta, base_copy, clock: Clock | None = None):
        self.spec, self.beta, self.data, self.clock = spec, beta, data, clock
        self.ref = base_copy

    def _part(self, kind: str, rows: int):
        return self.clock.part(kind, rows) if self.clock is not None else contextlib.nullcontext()

    def step(self):
        spec, (winners, losers, noise, t, cond) = self.spec, self.data
        b, total = winners.shape[0], 0.0
        for j in range(losers.shape[1]):
            with self._part("policy forward", 2 * b):
                ew = spec.per_sample_error(spec.transformer, winners, noise, t, cond)
                el = spec.per_sample_error(spec.transformer, losers[:, j], noise, t, cond)
            with torch.no_grad(), self._part("reference forward", 2 * b):
                rw = spec.per_sample_error(self.ref, winners, noise, t, cond)
                rl = spec.per_sample_error(self.ref, losers[:, j], noise, t, cond)
            loss = -F.logsigmoid(-0.5 * self.beta * ((ew - rw) - (el - rl))).mean()
            with self._part("backward", 2 * b):
                loss.backward()
            total += loss.item()
        return total


def make(side: str, args, device, dtype, clock: Clock | None = None):
    spec, latent, text = build(args.size, device, dtype, args.gradient_checkpointing)
    base_copy = None
    if side == "official":  # the frozen copy is taken before the adapter exists: it is the base model
        base_copy = copy.deepcopy(spec.transformer).eval().requires_grad_(False)
    params = add_lora(spec, args.rank)
    data = batch(spec, latent, text, args.batch, args.k, device, dtype)
    runner = Ours(spec, data, args.beta, args.chunk_size, args.keep_graph, clock,
                  getattr(args, "winner_pass", False)) if side == "realdpo" \
        else Official(spec, data, args.beta, base_copy, clock)
    return runner, params


SIDES = ("realdpo", "official")


def measure(args, device, dtype) -> dict:
    """Peak memory of each side's setup + first step (the warm-up), then `repeat` timed steps per side in
    alternating order (realdpo first in even repeats, official first in odd ones), each with its per-pass times."""
    from realdpo.memory import TensorTracker, peak_allocated

    runners, peaks, losses, clocks = {}, {}, {}, {}
    for side in SIDES:
        clocks[side] = Clock(device)

        def first_step(side=side):
            runner, params = make(side, args, device, dtype, clocks[side])
            losses[side] = float(runner.step())  # a 0-dim tensor: --out writes JSON
            for p in params:
                p.grad = None
            runners[side] = (runner, params)
        if device.type == "cuda":
            peaks[side] = peak_allocated(first_step, device)
        else:
            with TensorTracker() as tracker:
                first_step()
            peaks[side] = tracker.peak
    steps = {side: [] for side in SIDES}
    for i in range(args.repeat):
        for side in (SIDES if i % 2 == 0 else SIDES[::-1]):
            runner, params = runners[side]
            clock = clocks[side]
            clock.reset()
            clock.sync()
            t0 = time.perf_counter()
            c0 = time.process_time()
            runner.step()
            clock.sync()
            steps[side].append({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                                "passes": {k: {"s": clock.seconds[k], "cpu_s": clock.cpu_seconds[k], "rows": clock.rows[k], "calls": clock.calls[k]}
                                           for k in Clock.KINDS}})
            for p in params:
                p.grad = None
    return {"steps": steps, "peak_bytes": peaks, "loss": losses}


def summarize(size: str, r: dict, k: int) -> dict:
    """Medians over the repeats, the paired per-repeat ratios, and each kind of pass's median seconds."""
    med = {side: statistics.median(s["wall_s"] for s in r["steps"][side]) for side in SIDES}
    cpu = {side: statistics.median(s["cpu_s"] for s in r["steps"][side]) for side in SIDES}
    paired = [a["wall_s"] / b["wall_s"] for a, b in zip(r["steps"]["realdpo"], r["steps"]["official"])]
    passes = {side: {kind: {"s": statistics.median(s["passes"][kind]["s"] for s in r["steps"][side]),
                            "cpu_s": statistics.median(s["passes"][kind]["cpu_s"] for s in r["steps"][side]),
                            "rows": r["steps"][side][0]["passes"][kind]["rows"],
                            "calls": r["steps"][side][0]["passes"][kind]["calls"]}
                     for kind in Clock.KINDS} for side in SIDES}
    overrides, f, h, w, text = SIZES[size]
    return {"size": size, "tokens_per_row": f * (h // 2) * (w // 2) + text, "median_wall_s": med, "median_cpu_s": cpu,
            "time_ratio": med["realdpo"] / med["official"], "paired_ratios": paired,
            "cpu_ratio": cpu["realdpo"] / cpu["official"],
            "mem_ratio": r["peak_bytes"]["realdpo"] / r["peak_bytes"]["official"],
            "peak_bytes": r["peak_bytes"], "passes": passes,
            # the official loss sums over the K negatives, realdpo's averages: equal after dividing by K
            "loss": r["loss"], "loss_difference_at_equal_scale": abs(r["loss"]["realdpo"] - r["loss"]["official"] / k),
            "steps": r["steps"]}


def print_summary(s: dict) -> None:
    size, med = s["size"], s["median_wall_s"]
    print(f"[{size}] {s['tokens_per_row']} tokens/row | step time (median of {len(s['paired_ratios'])}): realdpo "
          f"{med['realdpo']:.3f}s, official {med['official']:.3f}s (CPU {s['median_cpu_s']['realdpo']:.3f}s, "
          f"{s['median_cpu_s']['official']:.3f}s) | paired ratios {' '.join(f'{x:.3f}' for x in s['paired_ratios'])} | "
          f"peak memory: realdpo {s['peak_bytes']['realdpo'] / 2**20:.0f} MiB, official "
          f"{s['peak_bytes']['official'] / 2**20:.0f} MiB | |loss - official loss / K| "
          f"{s['loss_difference_at_equal_scale']:.2e}", flush=True)
    for kind in Clock.KINDS:
        a, b = s["passes"]["realdpo"][kind], s["passes"]["official"][kind]
        ratio = f"{a['s'] / b['s']:.3f} (CPU {a['cpu_s'] / b['cpu_s']:.3f})" if b["s"] and b["cpu_s"] else "-"
        print(f"[{size}]   {kind:24s} realdpo {a['s']:8.3f}s, CPU {a['cpu_s']:8.3f}s ({a['calls']} calls, {a['rows']} "
              f"rows) | official {b['s']:8.3f}s, CPU {b['cpu_s']:8.3f}s ({b['calls']} calls, {b['rows']} rows) | "
              f"ratio {ratio}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["small", "medium", "4k-tokens-narrow"], choices=list(SIZES),
                    help="Model sizes to run, in order (the last one's ratios are printed last).")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="Model dtype (default float32 on CPU, bfloat16 on CUDA).")
    ap.add_argument("--batch", type=int, default=1, help="Real clips per step (B).")
    ap.add_argument("--k", type=int, default=3, help="Negatives per clip (K).")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank.")
    ap.add_argument("--beta", type=float, default=5000.0)
    ap.add_argument("--repeat", type=int, default=3, help="Timed steps per side after the warm-up step, alternating.")
    ap.add_argument("--chunk-size", type=int, default=1,
                    help="realdpo's --chunk-size in rows (0: all rows in one pass).")
    ap.add_argument("--keep-graph", action="store_true", help="realdpo's --keep-graph (instead of streamed chunks).")
    ap.add_argument("--winner-pass", action="store_true",
                    help="Streamed chunks with the no-grad winner pass (as several processes run them) instead of "
                         "setting loser rows' gradients aside (one process, LoRA: the trainer's default).")
    ap.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                    help="Gradient checkpointing on both sides (the official training scripts enable it).")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default; 1 is steadier on shared cores).")
    ap.add_argument("--out", type=Path, default=None, help="Write every repeat and pass time here as JSON.")
    args = ap.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.chunk_size = args.chunk_size or None
    if args.threads:
        torch.set_num_threads(args.threads)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    header = dict(device=str(device), dtype=args.dtype, threads=torch.get_num_threads(), B=args.batch, K=args.k,
                  lora_rank=args.rank, chunk_size=args.chunk_size, keep_graph=args.keep_graph,
                  gradient_checkpointing=args.gradient_checkpointing, repeat=args.repeat)
    print(" ".join(f"{k}={v}" for k, v in header.items()), flush=True)
    repeat, line, results = args.repeat, "", []
    for size in ("warmup", *args.sizes):  # warmup: kernels and lazy imports, not reported
        args.size = size
        args.repeat = 1 if size == "warmup" else repeat
        summary = summarize(size, measure(args, device, dtype), args.k)
        if size == "warmup":
            continue
        results.append(summary)
        print_summary(summary)
        line = (f"time_ratio={summary['time_ratio']:.3f} cpu_time_ratio={summary['cpu_ratio']:.3f} "
                f"mem_ratio={summary['mem_ratio']:.3f}")
        print(f"[{size}] {line}", flush=True)
        if args.out:  # after every size, so a killed run keeps what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.out.with_suffix(".tmp")
            tmp.write_text(json.dumps({"config": header, "sizes": results}, indent=1))
            tmp.replace(args.out)
    print(line)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
