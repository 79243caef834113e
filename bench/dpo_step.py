"""The RealDPO step (realdpo.method.step, as the trainer runs it) against a faithful re-implementation of the official loop.

Same CogVideoX transformer (random weights, built from a config), same LoRA, same batch (B real clips, K = 3 negatives),
same timesteps and noise:

- realdpo: reference = the same module with its LoRA adapters disabled; the policy runs once on [x_w, x_l^1..x_l^K]
  with gradients, the reference once without; chunks of --chunk-size rows are streamed (each backpropagated before
  the next runs), or with --keep-graph kept until one backward.
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
width 4096, rotary positions) at width 1024 with 2 layers, where activations decide it. CogVideoX-5B's own width (3072)
at this token count takes over a minute per row-pass on a CPU core; bench/memory.py predicts the real models.

    python bench/dpo_step.py                      # small, medium, 4k-tokens: ~5 min on 2 idle cores
    python bench/dpo_step.py --sizes cogvideox-2b  # CogVideoX-2B's real transformer config (needs a GPU)
"""

from __future__ import annotations

import argparse
import copy
import functools
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
    noise = torch.randn(b, *latent, generator=g).to(device)
    t = spec.sample_timesteps(b, 0.0, 0.5, generator=g).to(device)
    cond = {"prompt_embeds": torch.randn(b, *text, generator=g).to(device, dtype)}
    return winners, losers, noise, t, cond


class Ours:
    name = "realdpo"

    def __init__(self, spec, data, beta, chunk, keep_graph):
        from realdpo.method.reference import DisabledAdapterReference
        from realdpo.method.step import ErrorModel, build_inputs

        self.spec, self.beta, self.chunk, self.keep_graph = spec, beta, chunk, keep_graph
        self.policy, self.ref = ErrorModel(spec, spec.transformer), DisabledAdapterReference(spec.transformer)
        winners, losers, noise, t, cond = data
        self.inputs = build_inputs(winners, losers, cond, noise, t)

    def step(self):
        from realdpo.method.step import preference_step

        return preference_step(self.policy, self.ref, self.spec, self.inputs, kind="dpo", beta=self.beta,
                               chunk_size=self.chunk, keep_graph=self.keep_graph)["loss"]


class Official:
    """The official loop: a separate frozen reference copy; per negative 4 passes and one backward."""

    name = "official"

    def __init__(self, spec, data, beta, base_copy):
        self.spec, self.beta, self.data = spec, beta, data
        self.ref = base_copy

    def step(self):
        spec, (winners, losers, noise, t, cond) = self.spec, self.data
        total = 0.0
        for j in range(losers.shape[1]):
            ew = spec.per_sample_error(spec.transformer, winners, noise, t, cond)
            el = spec.per_sample_error(spec.transformer, losers[:, j], noise, t, cond)
            with torch.no_grad():
                rw = spec.per_sample_error(self.ref, winners, noise, t, cond)
                rl = spec.per_sample_error(self.ref, losers[:, j], noise, t, cond)
            loss = -F.logsigmoid(-0.5 * self.beta * ((ew - rw) - (el - rl))).mean() / losers.shape[1]
            loss.backward()
            total += loss.item()
        return total


def make(side: str, args, device, dtype):
    spec, latent, text = build(args.size, device, dtype, args.gradient_checkpointing)
    base_copy = None
    if side == "official":  # the frozen copy is taken before the adapter exists: it is the base model
        base_copy = copy.deepcopy(spec.transformer).eval().requires_grad_(False)
    params = add_lora(spec, args.rank)
    data = batch(spec, latent, text, args.batch, args.k, device, dtype)
    runner = Ours(spec, data, args.beta, args.chunk_size, args.keep_graph) if side == "realdpo" \
        else Official(spec, data, args.beta, base_copy)
    return runner, params


def measure(args, device, dtype) -> tuple[float, float, int, int, float]:
    """Peak memory of each side's setup + first step, then the median time of `repeat` alternating steps."""
    from realdpo.memory import TensorTracker, peak_allocated

    runners, peaks, losses = {}, {}, {}
    for side in ("realdpo", "official"):
        def first_step(side=side):
            runner, params = make(side, args, device, dtype)
            losses[side] = runner.step()
            for p in params:
                p.grad = None
            runners[side] = (runner, params)
        if device.type == "cuda":
            peaks[side] = peak_allocated(first_step, device)
        else:
            with TensorTracker() as tracker:
                first_step()
            peaks[side] = tracker.peak
    times = {"realdpo": [], "official": []}
    for _ in range(args.repeat):
        for side, (runner, params) in runners.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            runner.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[side].append(time.perf_counter() - t0)
            for p in params:
                p.grad = None
    return (statistics.median(times["realdpo"]), statistics.median(times["official"]), peaks["realdpo"],
            peaks["official"], abs(losses["realdpo"] - losses["official"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["small", "medium", "4k-tokens"], choices=list(SIZES),
                    help="Model sizes to run, in order (the last one's ratios are printed last).")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="Model dtype (default float32 on CPU, bfloat16 on CUDA).")
    ap.add_argument("--batch", type=int, default=1, help="Real clips per step (B).")
    ap.add_argument("--k", type=int, default=3, help="Negatives per clip (K).")
    ap.add_argument("--rank", type=int, default=16, help="LoRA rank.")
    ap.add_argument("--beta", type=float, default=5000.0)
    ap.add_argument("--repeat", type=int, default=None,
                    help="Timed steps per side after the first (default 3; 1 for 4k-tokens and larger).")
    ap.add_argument("--chunk-size", type=int, default=1,
                    help="realdpo's --chunk-size in rows (0: all rows in one pass).")
    ap.add_argument("--keep-graph", action="store_true", help="realdpo's --keep-graph (instead of streamed chunks).")
    ap.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                    help="Gradient checkpointing on both sides (the official training scripts enable it).")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default; 1 is steadier on shared cores).")
    args = ap.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    args.chunk_size = args.chunk_size or None
    if args.threads:
        torch.set_num_threads(args.threads)

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"device={device} dtype={args.dtype} threads={torch.get_num_threads()} B={args.batch} K={args.k} "
          f"lora_rank={args.rank} chunk_size={args.chunk_size} keep_graph={args.keep_graph} "
          f"gradient_checkpointing={args.gradient_checkpointing}", flush=True)
    repeat, line = args.repeat, ""
    for size in ("warmup", *args.sizes):  # warmup: kernels and lazy imports, not reported
        args.size = size
        args.repeat = repeat or (3 if size in ("warmup", "small", "medium") else 1)
        t_ours, t_off, m_ours, m_off, dloss = measure(args, device, dtype)
        if size == "warmup":
            continue
        overrides, f, h, w, text = SIZES[size]
        tokens = f * (h // 2) * (w // 2) + text
        print(f"[{size}] {tokens} tokens/row | step time: realdpo {t_ours:.3f}s, official {t_off:.3f}s | peak memory: "
              f"realdpo {m_ours / 2**20:.0f} MiB, official {m_off / 2**20:.0f} MiB | |loss difference| {dloss:.2e}",
              flush=True)
        line = f"time_ratio={t_ours / t_off:.3f} mem_ratio={m_ours / m_off:.3f}"
        print(f"[{size}] {line}", flush=True)
    print(line)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
