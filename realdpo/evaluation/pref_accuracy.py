"""pref_accuracy: how often the trained policy's implicit reward prefers the real clip over its cached negatives.

For every held-out sample in `--pairs` with K cached negatives (round `--round`), and for `--pref-timesteps`
timesteps and noise tensors drawn from a generator seeded by (`--seed`, the sample key) — the same draws for every
LoRA evaluated, so runs compare on identical noise — we compute the per-sample errors E of the loss (docs/method.md) for the
policy (model + `--lora`) and the reference (the same transformer with the adapters disabled), average them over
the timesteps, and form `d_k = [E_θ(x_w) - E_ref(x_w)] - [E_θ(x_l^k) - E_ref(x_l^k)]` (`realdpo.method.losses`).

- `pref_accuracy`: percentage of (real clip, negative) pairs with d_k < 0 (the policy prefers the real clip), a tie
  d_k = 0 counting one half (as training's `accuracy`), 0–100.
- `pref_margin`: mean implicit reward margin `-(beta/2) d_k`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from rich.console import Console

from realdpo.configs.eval import EvalConfig


def sample_generator(seed: int, key: str) -> torch.Generator:
    digest = int(hashlib.sha256(f"realdpo-pref:{seed}:{key}".encode()).hexdigest()[:15], 16)
    return torch.Generator("cpu").manual_seed(digest)


@torch.no_grad()
def pair_diffs(spec, winner: torch.Tensor, losers: torch.Tensor, cond: dict[str, torch.Tensor],
               generator: torch.Generator, n_timesteps: int, t_min: float, t_max: float) -> torch.Tensor:
    """d_k [K] of one real clip (winner [1, ...], losers [K, ...]), errors averaged over the fixed timesteps."""
    from realdpo.method.losses import preference_diff
    from realdpo.method.reference import adapters_disabled

    k = losers.shape[0]
    latents = torch.cat([winner, losers]).to(spec.device)
    cond_all = {n: v.to(spec.device).expand(k + 1, *v.shape[1:]) for n, v in cond.items()}
    err_pol = torch.zeros(k + 1)
    err_ref = torch.zeros(k + 1)
    for _ in range(n_timesteps):
        t = spec.sample_timesteps(1, t_min, t_max, generator=generator)
        noise = torch.randn(spec.noise_shape(tuple(winner.shape)), generator=generator, dtype=torch.float32)
        # one timestep and one noise tensor shared by the winner and all K losers (docs/method.md, "The loss")
        noise_all = noise.expand(k + 1, *noise.shape[1:]).to(spec.device)
        t_all = t.expand(k + 1).to(spec.device)
        err_pol += spec.per_sample_error(spec.transformer, latents, noise_all, t_all, cond_all).float().cpu()
        with adapters_disabled(spec.transformer):
            err_ref += spec.per_sample_error(spec.transformer, latents, noise_all, t_all, cond_all).float().cpu()
    err_pol /= n_timesteps
    err_ref /= n_timesteps
    return preference_diff(err_pol[:1], err_ref[:1], err_pol[1:][None], err_ref[1:][None])[0]


def preference_accuracy(cfg: EvalConfig, console: Console | None = None) -> dict:
    """{"metrics": {"pref_accuracy", "pref_margin", "n_pairs"}, "settings": {...}} over the held-out `--pairs`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from realdpo.configs.common import torch_dtype
    from realdpo.data.cache import LatentCache
    from realdpo.data.clips import expand_shards, iter_shard_samples
    from realdpo.generation.recipes import NegativePlan, lora_weights_id
    from realdpo.generation.sampling import load_lora
    from realdpo.models import load_spec

    console = console or Console()
    shards = expand_shards(cfg.pairs, option="--pairs")
    spec = load_spec(cfg.model, dtype=torch_dtype(cfg.mixed_precision), task=cfg.task)
    frames, height, width = spec.resolve_size(cfg.frames, cfg.height, cfg.width)
    fps = spec.run_defaults(cfg.fps).fps
    # the cache is keyed by the base model's fingerprint: take it before the LoRA goes in
    fingerprint = spec.fingerprint()
    cache = LatentCache(cfg.cache_dir, fingerprint, frames, height, width, fps)
    weights = lora_weights_id(cfg.neg_lora) if cfg.neg_lora is not None else "base"
    loser_plan = NegativePlan.from_options(cfg, spec, round=cfg.round, weights=weights).losers
    load_lora(spec, Path(cfg.lora))

    diffs: list[torch.Tensor] = []
    missing, seen = 0, 0
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("preference pairs", total=None)
        for sample in iter_shard_samples(shards, allow_blank_captions=True):  # looked up by key: the text is unused
            seen += 1
            pair = loser_plan.load(cache, sample.ref)
            if pair is None:
                missing += 1
            else:
                entry, losers = pair
                winner = entry.pop("latents").float()
                diffs.append(pair_diffs(spec, winner, losers.float(), entry, sample_generator(cfg.seed, sample.key),
                                        cfg.pref_timesteps, cfg.t_min, cfg.t_max))
            progress.update(task, advance=1)
    settings = {"lora": str(cfg.lora), "model": str(spec.path), "fingerprint": fingerprint,
                "size": [frames, height, width], "fps": fps, "round": cfg.round, "negatives": cfg.negatives,
                "timesteps_per_pair": cfg.pref_timesteps, "t_range": [cfg.t_min, cfg.t_max], "seed": cfg.seed,
                "beta": cfg.beta, "negatives_from": cfg.negatives_from,
                "samples_seen": seen, "samples_not_cached": missing}
    if not diffs:
        return {"metrics": {}, "settings": settings,
                "skipped": f"none of the {seen} --pairs samples has its latents and {cfg.negatives} negatives of round "
                           f"{cfg.round} ({cfg.negatives_from}, with these --neg-* options) for this model and size in "
                           f"{cache.dir} (run `realdpo negatives` with the same options first)"}
    d = torch.cat(diffs).double()
    # a tie (an adapter that changes nothing) counts one half, as in training's accuracy
    metrics = {"pref_accuracy": float(((d < 0).double() + 0.5 * (d == 0).double()).mean() * 100.0),
               "pref_margin": float((-0.5 * cfg.beta * d).mean()), "n_pairs": int(d.numel())}
    return {"metrics": metrics, "settings": settings}
