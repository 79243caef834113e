"""`realdpo lab build`: train the lab model from a seed on the web mix, in resumable stages (the fourth optional).

1. VAE: `vae_steps` steps of pixel MSE (ball pixels weighted up) + `vae_kl` x KL on random `vae_frames`-frame
   windows of fresh web-mix clips (`vae_recolor` of them recoloured; with `vae_crop`, first on crops around the ball,
   the last `vae_full_fraction` on full frames); in the second half the sampled latents get Gaussian noise of
   `vae_latent_noise` x their std before decoding. Then the latents' scaling factor is set to 1 / std of the latents
   of 64 clips, the decoder alone optionally trains `decoder_steps` more steps on noisy latents (the encoder, and so
   every latent the later stages see, is unchanged), and the tracker's reading of 64 reconstructed real clips is
   recorded.
2. Data: `clips` web-mix clips encoded once through the spec (`encode_videos`, `encode_first_frames`), exactly as
   `realdpo train` encodes its real clips.
3. Transformer and text encoder, jointly: `steps` steps of the v-prediction loss `ModelSpec.per_sample_error`
   (timesteps uniform over the whole schedule; `caption_dropout` of the captions replaced by ""), AdamW with
   warm-up then cosine decay, gradient clipping at 1, and an EMA of the weights that is what gets saved.
4. Refine: `refine_steps` more steps of stage 3's loss from its saved (EMA) weights, on `refine_clips` fresh web-mix
   clips, with a fresh optimizer, warm-up and cosine decay from `refine_lr` (0 skips the stage).

Each stage leaves its result in OUT/.build (the VAE folder, the encoded data, transformer checkpoints every 250
steps, stage 3's pipeline), so a killed build restarts where it stopped; the finished pipeline is written to a
temporary folder and renamed to OUT. Stage wall and CPU times and final losses go to OUT/build_info.json.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from realbase.errors import UserError
from realbase.files import atomic_dir, atomic_file
from realdpo.configs.lab import LabBuildConfig
from realdpo.lab.sets import set_clip
from realdpo.lab.world import FRAMES, derive_seed
from realdpo.models.frames import to_tensor
from realdpo.runtime import step_progress

CHECKPOINT_EVERY = 250
SCALE_CLIPS = 64  # clips whose latents set the VAE's scaling factor
CHECK_CLIPS = 64  # real-set clips the tracker reads off VAE reconstructions (build_info.json)


def _videos(clips) -> torch.Tensor:
    """uint8 clips [F, H, W, 3] each -> float [B, F, 3, H, W] in [-1, 1]."""
    return torch.stack([to_tensor(c) for c in clips])


def _save_atomic(save, target: Path) -> None:
    """`save(tmp_dir)` then rename tmp_dir to `target` (replacing it)."""
    with atomic_dir(target) as tmp:
        save(tmp)


def tokenize(tokenizer, captions: list[str], max_length: int) -> torch.Tensor:
    """Token ids exactly as CogVideoX pipelines tokenize prompts (`_get_t5_prompt_embeds`)."""
    return tokenizer(captions, padding="max_length", max_length=max_length, truncation=True,
                     add_special_tokens=True, return_tensors="pt").input_ids


# ---------------------------------------------------------------------------------------------- stage 1: VAE

def _recolor(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour transform of a whole clip (channel permutation, per-channel gain and offset): with the
    background's colour changing, every pixel teaches the VAE colour, not only the ~3 % a ball covers."""
    perm, gain, offset = rng.permutation(3), rng.uniform(0.5, 1.15, 3), rng.uniform(-30, 80, 3)
    return np.clip(np.rint(frames[..., perm] * gain + offset), 0, 255).astype(np.uint8)


def _vae_batch(cfg: LabBuildConfig, step: int, rng: np.random.Generator, crop: int,
               n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n random windows of web-mix clips (`vae_recolor` of them recoloured), cropped to `crop` around a ball, as [n, 3, F, S, S]
    in [-1, 1], and the loss weights [n, 1, F, S, S] (1 + vae_ball_weight where a ball covers the pixel)."""
    from realdpo.lab.world import BACKGROUND, SIZE

    clips, weights = [], []
    for i in range(n):
        clip = set_clip("web", step * cfg.vae_batch + i, derive_seed("lab-build-vae-clips", cfg.seed), cfg.web_unreal)
        start = int(rng.integers(0, FRAMES - cfg.vae_frames + 1))
        frames = clip.frames[start:start + cfg.vae_frames]
        ball = (frames != np.asarray(BACKGROUND, np.uint8)).any(-1)
        if cfg.vae_recolor and rng.random() < cfg.vae_recolor:
            frames = _recolor(frames, rng)
        if crop < SIZE:
            cx, cy = clip.centers[start + cfg.vae_frames // 2, 0] + rng.normal(0, 6, 2)
            x0, y0 = (int(np.clip(c - crop / 2, 0, SIZE - crop)) for c in (cx, cy))
            frames, ball = frames[:, y0:y0 + crop, x0:x0 + crop], ball[:, y0:y0 + crop, x0:x0 + crop]
        clips.append(frames)
        weights.append(1.0 + cfg.vae_ball_weight * ball)
    x = _videos(clips).permute(0, 2, 1, 3, 4)
    return x, torch.from_numpy(np.stack(weights)).float()[:, None]


def _weighted_mse(recon: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Pixel MSE with the weights `_vae_batch` gives (ball pixels count 1 + vae_ball_weight times)."""
    return ((recon - x).pow(2) * w).mean() / w.mean()


def _one_cycle(params, lr: float, steps: int):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.05)


def _optimizer_step(loss: torch.Tensor, params, opt, sched) -> None:
    """Backward, clip the gradient norm at 1, step the optimizer and its schedule (every stage's step)."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def train_vae(cfg: LabBuildConfig, folder: Path) -> dict:
    from diffusers import AutoencoderKLCogVideoX

    from realdpo.lab.model import VAE_CONFIG
    from realdpo.lab.world import SIZE

    torch.manual_seed(derive_seed("lab-build-vae", cfg.seed) % (1 << 31))
    vae = AutoencoderKLCogVideoX(**VAE_CONFIG)
    vae.train()
    params = list(vae.parameters())
    opt, sched = _one_cycle(params, cfg.vae_lr, cfg.vae_steps)
    rng = np.random.default_rng(derive_seed("lab-build-vae-windows", cfg.seed))
    noisy_from = cfg.vae_steps // 2
    full_from = cfg.vae_steps - int(round(cfg.vae_full_fraction * cfg.vae_steps)) if cfg.vae_crop else 0
    losses = []
    with step_progress() as bar:
        task = bar.add_task("VAE", total=cfg.vae_steps, info="")
        for step in range(cfg.vae_steps):
            full = step >= full_from
            x, w = _vae_batch(cfg, step, rng, SIZE if full else cfg.vae_crop,
                              max(1, cfg.vae_batch // 2) if full and cfg.vae_crop else cfg.vae_batch)
            posterior = vae.encode(x).latent_dist
            z = posterior.sample()
            if cfg.vae_latent_noise and step >= noisy_from:
                z = z + cfg.vae_latent_noise * z.detach().std() * torch.randn_like(z)
            recon = vae.decode(z).sample
            mse = _weighted_mse(recon, x, w)
            kl = posterior.kl().mean() / posterior.mean[0].numel()
            _optimizer_step(mse + cfg.vae_kl * kl, params, opt, sched)
            losses.append(mse.item())
            bar.update(task, advance=1, info=f"{'full' if full else 'crop'} mse {np.mean(losses[-20:]):.5f}")
    vae.eval()
    with torch.no_grad():  # unit-scale latents: scaling_factor = 1 / std over SCALE_CLIPS clips
        x = _videos([set_clip("web", i, derive_seed("lab-build-vae-scale", cfg.seed), cfg.web_unreal).frames
                     for i in range(SCALE_CLIPS)]).permute(0, 2, 1, 3, 4)
        z = torch.cat([vae.encode(x[i:i + 8]).latent_dist.mode() for i in range(0, SCALE_CLIPS, 8)])
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))
    results = {"vae_weighted_mse_last50": float(np.mean(losses[-50:])), "latent_std": float(z.std()),
               **finetune_decoder(cfg, vae)}
    _save_atomic(lambda tmp: vae.save_pretrained(tmp, safe_serialization=True), folder)
    return {**results, **vae_tracking_error(vae, cfg.seed, CHECK_CLIPS)}


def finetune_decoder(cfg: LabBuildConfig, vae) -> dict:
    """Train the decoder alone on full frames whose (frozen) encoder latents get noise of std ~ U(0, decoder_noise)
    in scaled-latent units. A generator's latents are never exact, and a decoder that has only seen exact latents
    turns small errors into speckle that the tracker reads as extra balls."""
    from realdpo.lab.world import SIZE

    if not cfg.decoder_steps:
        return {}
    torch.manual_seed(derive_seed("lab-build-decoder", cfg.seed) % (1 << 31))
    rng = np.random.default_rng(derive_seed("lab-build-decoder-windows", cfg.seed))
    params = list(vae.decoder.parameters())
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.train()
    opt, sched = _one_cycle(params, cfg.vae_lr / 4, cfg.decoder_steps)
    scale, n, losses = float(vae.config.scaling_factor), max(1, cfg.vae_batch // 2), []
    with step_progress() as bar:
        task = bar.add_task("decoder", total=cfg.decoder_steps, info="")
        for step in range(cfg.decoder_steps):
            x, w = _vae_batch(cfg, cfg.vae_steps + step, rng, SIZE, n)  # clips the VAE steps did not see
            with torch.no_grad():
                z = vae.encode(x).latent_dist.mode()
            std = torch.from_numpy(rng.uniform(0, cfg.decoder_noise, n)).float().view(-1, 1, 1, 1, 1) / scale
            recon = vae.decode(z + std * torch.randn(z.shape)).sample
            mse = _weighted_mse(recon, x, w)
            _optimizer_step(mse, params, opt, sched)
            losses.append(mse.item())
            bar.update(task, advance=1, info=f"noisy-latent mse {np.mean(losses[-20:]):.5f}")
    vae.requires_grad_(True)
    vae.eval()
    return {"decoder_noisy_mse_last50": float(np.mean(losses[-50:]))}


@torch.no_grad()
def vae_tracking_error(vae, seed: int, n: int = CHECK_CLIPS) -> dict:
    """How well the tracker reads balls off VAE reconstructions of n real-set clips: the distance between each
    tracked blob and the nearest true centre (median, 95th percentile, px), the share that pass the render checks
    and the share still called physical (every check), and the medians of size ratio, colour drift and residual."""
    from realdpo.lab.tracker import find_blobs, score_video

    dists, physical, render, ratios, drifts, resids = [], [], [], [], [], []
    for i in range(n):
        clip = set_clip("real", i, derive_seed("lab-build-vae-check", seed))
        x = _videos([clip.frames]).permute(0, 2, 1, 3, 4)
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        frames = ((recon[0].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
        s = score_video(frames)
        physical.append(s.physical)
        render.append(s.render_pass)
        if s.residual is not None:
            ratios.append(s.size_ratio)
            drifts.append(s.color_drift)
            resids.append(s.residual)
        for f, blobs in enumerate(find_blobs(fr) for fr in frames):
            dists += [float(np.linalg.norm(clip.centers[f] - [b.x, b.y], axis=1).min()) for b in blobs]
    return {"vae_recon_position_error_px": [float(np.median(dists)), float(np.percentile(dists, 95))],
            "vae_recon_physical_rate": 100.0 * float(np.mean(physical)),
            "vae_recon_render_pass": 100.0 * float(np.mean(render)), "vae_recon_clips": n,
            "vae_recon_medians": {"size_ratio": float(np.median(ratios)) if ratios else None,
                                  "color_drift": float(np.median(drifts)) if drifts else None,
                                  "residual": float(np.median(resids)) if resids else None}}


# ---------------------------------------------------------------------------------------------- stage 2: data

def encode_data(cfg: LabBuildConfig, spec, path: Path, count: int, tag: str) -> None:
    """`count` web-mix clips drawn from the seed derived from `tag` (each stage that trains gets its own clips)."""
    from safetensors.torch import save_file

    latents, images, captions = [], [], []
    data_seed = derive_seed(tag, cfg.seed)
    with step_progress() as bar:
        task = bar.add_task("encode", total=count, info="web-mix clips")
        for start in range(0, count, 16):
            clips = [set_clip("web", i, data_seed, cfg.web_unreal) for i in range(start, min(start + 16, count))]
            video = _videos([c.frames for c in clips])
            latents.append(spec.encode_videos(video))
            images.append(spec.encode_first_frames(video[:, 0], FRAMES)["image_latents"])
            captions += [c.caption for c in clips]
            bar.update(task, advance=len(clips))
    with atomic_file(path) as tmp:
        save_file({"latents": torch.cat(latents).contiguous(), "image_latents": torch.cat(images).contiguous()}, tmp,
                  metadata={"captions": json.dumps(captions)})


# ---------------------------------------------------------------------------------------------- stage 3: transformer

def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_transformer(cfg: LabBuildConfig, spec, data: Path, ckpt_dir: Path, steps: int, lr: float,
                      stage: str = "transformer") -> dict:
    """`steps` steps from the spec's current weights on the clips in `data`; `stage` names the progress bar, the
    training order's seed and the loss reported (stage 3 and the refine stage both run here)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(data), "pt") as f:
        captions = json.loads(f.metadata()["captions"])
    tensors = load_file(str(data))
    latents, image_latents = tensors["latents"], tensors["image_latents"]
    n = latents.shape[0]
    modules = {"transformer": spec.transformer, "text_encoder": spec.text_encoder}
    params = {f"{m}.{k}": p for m, mod in modules.items() for k, p in mod.named_parameters()}
    for mod in modules.values():
        mod.requires_grad_(True).train()
    ema = {k: p.detach().clone() for k, p in params.items()}
    opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.01)
    warmup = min(200, steps // 10 + 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps, warmup))
    max_len = spec.max_sequence_length

    start, losses = 0, []
    done = sorted(ckpt_dir.glob("step-*/optimizer.pt"), key=lambda p: int(p.parent.name[5:]))
    if done:  # resume from the newest complete checkpoint: weights, EMA, optimizer and schedule state
        folder = done[-1].parent
        state = load_file(str(folder / "weights.safetensors"))
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(state[f"w.{k}"])
                ema[k].copy_(state[f"ema.{k}"])
        extra = torch.load(folder / "optimizer.pt", weights_only=True)
        opt.load_state_dict(extra["optimizer"])
        sched.load_state_dict(extra["scheduler"])
        start, losses = int(extra["step"]), list(extra["losses"])

    def save_checkpoint(step: int) -> None:
        """CKPT_DIR/step-N written as a whole (a folder renamed into place), then older ones removed."""
        def save(tmp: Path) -> None:
            tensors = {f"w.{k}": p.detach().contiguous() for k, p in params.items()}
            tensors.update({f"ema.{k}": v.contiguous() for k, v in ema.items()})
            save_file(tensors, tmp / "weights.safetensors")
            torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
                        "losses": losses}, tmp / "optimizer.pt")

        _save_atomic(save, ckpt_dir / f"step-{step}")
        for old in ckpt_dir.glob("step-*"):
            if old.name != f"step-{step}":
                shutil.rmtree(old, ignore_errors=True)

    tag = "lab-build-step" if stage == "transformer" else f"lab-build-{stage}-step"  # stage 3's, as first built
    with step_progress() as bar:
        task = bar.add_task(stage, total=steps, completed=start, info="")
        for step in range(start, steps):
            g = torch.Generator().manual_seed(derive_seed(tag, cfg.seed, step) % (1 << 63))
            idx = torch.randint(0, n, (cfg.batch,), generator=g)
            drop = torch.rand(cfg.batch, generator=g) < cfg.caption_dropout
            text = ["" if d else captions[i] for i, d in zip(idx.tolist(), drop.tolist())]
            x0 = latents[idx]
            noise = torch.randn(x0.shape, generator=g)
            t = spec.sample_timesteps(cfg.batch, 0.0, 1.0, generator=g)
            embeds = spec.text_encoder(tokenize(spec.tokenizer, text, max_len))[0]
            err = spec.per_sample_error(spec.transformer, x0, noise, t,
                                        {"prompt_embeds": embeds, "image_latents": image_latents[idx]})
            loss = err.mean()
            _optimizer_step(loss, list(params.values()), opt, sched)
            with torch.no_grad():
                rate = min(cfg.ema, (1 + step) / (10 + step))  # the usual EMA warm-up
                for k, p in params.items():
                    ema[k].lerp_(p.detach(), 1 - rate)
            losses.append(loss.item())
            bar.update(task, advance=1, info=f"loss {np.mean(losses[-50:]):.4f}")
            if (step + 1) % CHECKPOINT_EVERY == 0 and step + 1 < steps:
                save_checkpoint(step + 1)
    with torch.no_grad():  # the EMA is what is saved (with --ema 0 it equals the raw weights)
        for k, p in params.items():
            p.copy_(ema[k])
    for mod in modules.values():
        mod.requires_grad_(False).eval()
    return {f"{stage}_loss_last200": float(np.mean(losses[-200:]))}


# ---------------------------------------------------------------------------------------------- the command

def build(cfg: LabBuildConfig) -> Path:
    """Train the lab pipeline and save it to cfg.out; returns the folder."""
    from diffusers import AutoencoderKLCogVideoX

    from realdpo.lab.model import untrained_pipeline
    from realdpo.models import load_spec
    from realdpo.models.common import quiet_progress

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    work = out.parent / f".{out.name}.build"
    work.mkdir(parents=True, exist_ok=True)
    info_path = work / "info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    saved_cfg = {k: str(v) for k, v in vars(cfg).items() if k not in ("out", "threads")}
    if info.get("config", saved_cfg) != saved_cfg:
        raise UserError(f"{work} holds a build with other options; delete it or use another --out")
    info["config"] = saved_cfg
    info["torch_threads"] = torch.get_num_threads()

    def stage_done(name: str, t0: tuple[float, float], **results) -> None:
        """Wall and CPU seconds of a stage (CPU time is what a loaded machine does not inflate), summed over resumes."""
        for key, now, start in (("seconds", time.perf_counter(), t0[0]), ("cpu_seconds", time.process_time(), t0[1])):
            info.setdefault(key, {})[name] = round(now - start + info.get(key, {}).get(name, 0), 1)
        info.setdefault("threads", {})[name] = torch.get_num_threads()
        info.update(results)
        info_path.write_text(json.dumps(info, indent=1))

    def clock() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def encoded(spec, name: str, count: int, tag: str, stage: str) -> Path:
        """WORK/name: `count` web-mix clips encoded by `encode_data` (once; a resumed build reuses them)."""
        path = work / name
        if not path.is_file():
            t0 = clock()
            encode_data(cfg, spec, path, count, tag)
            stage_done(stage, t0)
        return path

    pretrained = work / "pretrained"
    if not (pretrained / "model_index.json").is_file():
        if not (work / "vae" / "config.json").is_file():
            t0 = clock()
            stage_done("vae", t0, **train_vae(cfg, work / "vae"))
        if not (work / "init" / "model_index.json").is_file():
            pipe = untrained_pipeline(derive_seed("lab-build-init", cfg.seed) % (1 << 31))
            with quiet_progress():
                pipe.vae = AutoencoderKLCogVideoX.from_pretrained(work / "vae")
                _save_atomic(lambda tmp: pipe.save_pretrained(tmp, safe_serialization=True), work / "init")
        spec = load_spec(work / "init")
        data = encoded(spec, "data.safetensors", cfg.clips, "lab-build-data", "data")
        t0 = clock()
        results = train_transformer(cfg, spec, data, work / "checkpoints", cfg.steps, cfg.lr)
        with quiet_progress():
            _save_atomic(lambda tmp: spec.pipeline().save_pretrained(tmp, safe_serialization=True), pretrained)
        stage_done("transformer", t0, **results)
    spec = load_spec(pretrained)
    if cfg.refine_steps:
        data = encoded(spec, "refine_data.safetensors", cfg.refine_clips, "lab-build-refine-data", "refine_data")
        t0 = clock()
        results = train_transformer(cfg, spec, data, work / "refine_checkpoints", cfg.refine_steps, cfg.refine_lr,
                                    stage="refine")
        stage_done("refine", t0, **results)

    probe = ["a red ball moves to the left", ""]  # the saved text encoder must serve the pipeline's own encoding
    with torch.no_grad():
        mine = spec.text_encoder(tokenize(spec.tokenizer, probe, spec.max_sequence_length))[0]
    if not torch.allclose(mine, spec.encode_prompts(probe)["prompt_embeds"], atol=1e-5):
        raise RuntimeError("lab build: prompt encoding differs from the pipeline's")

    def save(tmp: Path) -> None:
        with quiet_progress():
            spec.pipeline().save_pretrained(tmp, safe_serialization=True)
        (tmp / "build_info.json").write_text(json.dumps(info, indent=1))

    _save_atomic(save, out)
    shutil.rmtree(work, ignore_errors=True)
    return out
