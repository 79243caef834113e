"""Generated 'lose' videos for RealDPO, kept as latents, and the real clips' latents and conditioning, cached.

`ensure_cached` is what `realdpo train` calls before optimising (and between rounds, with the current policy);
`precompute` is `realdpo negatives`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from realaction.errors import UserError
from realdpo.data.cache import LatentCache
from realdpo.data.clips import BadClip, ClipSample, decode_clip, first_frame
from realdpo.models.base import ModelSpec

logger = logging.getLogger(__name__)


def negative_seed(seed: int, key: str, index: int, round: int) -> int:
    """The seed of negative `index` of clip `key` in `round`: stable across runs, processes and batch sizes."""
    digest = hashlib.sha256(f"realdpo-neg:{seed}:{key}:{index}:{round}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 62) - 1)


@dataclass
class _Job:
    key: str
    caption: str
    seed: int
    prompt_embeds: torch.Tensor  # [1, L, D]
    image: torch.Tensor | None  # [3, H, W] first frame for image-to-video


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("{task.fields[info]}"), disable=not enabled, transient=False)


def encode_real(spec: ModelSpec, sample: ClipSample, *, frames: int, height: int, width: int,
                fps: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The cache entry of a real clip ({"latents", cond...}, batch dim 1) and its first frame [3, H, W]."""
    video = decode_clip(sample.mp4, frames, height, width, fps)  # BadClip propagates: the caller skips
    entry = {"latents": spec.encode_videos(video[None])}
    entry.update(spec.encode_prompts([sample.caption]))
    entry.update(spec.encode_first_frames(video[:1], frames))
    return entry, video[0]


def ensure_cached(spec: ModelSpec, samples: Iterable[ClipSample], cache: LatentCache, *, frames: int, height: int,
                  width: int, fps: float, k: int, steps: int, guidance: float, seed: int, round: int = 1,
                  transformer: torch.nn.Module | None = None, progress: bool = True, batch_size: int = 4,
                  shard: tuple[int, int] | None = None) -> int:
    """Cache each clip's real latents + conditioning and its first k negatives of `round`; returns how many
    negatives were generated (0 when everything was cached).

    Negative i of clip `key` is generated from seed `negative_seed(seed, key, i, round)` with `transformer`
    (None: the loaded base model; later rounds pass the current policy), `batch_size` at a time. Clips too short for
    `frames` at `fps`, or undecodable, are skipped with a warning. `shard=(index, count)` keeps every count-th sample (one
    process's share).
    """
    if k < 1:
        raise UserError("k (negatives per clip) must be at least 1")
    spec.check_size(frames, height, width)
    generated = 0
    pending: list[_Job] = []
    seen: set[str] = set()
    skipped: list[str] = []
    was_training = transformer.training if transformer is not None else False

    def flush(jobs: list[_Job]) -> None:
        nonlocal generated
        if not jobs:
            return
        cond = {"prompt_embeds": torch.cat([j.prompt_embeds for j in jobs]).to(spec.device)}
        images = torch.stack([j.image for j in jobs]) if spec.task == "i2v" else None
        latents = spec.generate_latents([j.caption for j in jobs], cond, num_frames=frames, height=height,
                                        width=width, steps=steps, guidance=guidance, seeds=[j.seed for j in jobs],
                                        transformer=transformer, images=images)
        by_key: dict[str, list[int]] = {}
        for i, j in enumerate(jobs):
            by_key.setdefault(j.key, []).append(i)
        for key, idx in by_key.items():
            cache.put_negatives(key, round, latents[idx], [jobs[i].seed for i in idx])
        generated += len(jobs)
        jobs.clear()

    total = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
    if total is not None and shard is not None:
        total = len(range(shard[0], total, shard[1]))
    if transformer is not None:
        transformer.eval()
    try:
        with _progress(progress) as bar:
            task = bar.add_task(f"negatives r{round}", total=total, info="")
            for n, sample in enumerate(samples):
                if shard is not None and n % shard[1] != shard[0]:
                    continue
                if sample.key in seen:
                    continue
                seen.add(sample.key)
                try:
                    entry = cache.get_real(sample.key)
                    image = None
                    if entry is None:
                        entry, image = encode_real(spec, sample, frames=frames, height=height, width=width, fps=fps)
                        cache.put_real(sample.key, entry)
                    have = set(cache.negative_seeds(sample.key, round))
                    todo = [s for s in (negative_seed(seed, sample.key, i, round) for i in range(k)) if s not in have]
                    if todo and spec.task == "i2v" and image is None:
                        image = first_frame(sample.mp4, height, width)
                except BadClip as e:
                    skipped.append(sample.key)
                    logger.warning("skipping %s: %s", sample.key, e)
                    bar.advance(task)
                    continue
                for s in todo:
                    pending.append(_Job(sample.key, sample.caption, s, entry["prompt_embeds"], image))
                    if len(pending) >= batch_size:
                        flush(pending)
                bar.update(task, advance=1, info=f"{generated} generated, {len(skipped)} skipped")
            flush(pending)
            bar.update(task, info=f"{generated} generated, {len(skipped)} skipped")
    finally:
        if transformer is not None and was_training:
            transformer.train()
    if skipped:
        logger.warning("%d clip(s) undecodable or too short for %d frames at %g fps were skipped", len(skipped),
                       frames, fps)
    return generated








def precompute(cfg) -> int:
    """`realdpo negatives`: cache real latents, prompt embeddings and K negatives for every clip of the shards.
    Under `accelerate launch` each process takes every N-th clip."""
    from accelerate import PartialState
    from rich.console import Console

    from realdpo.configs.common import torch_dtype
    from realdpo.data.clips import expand_shards, iter_shard_samples
    from realdpo.models import load_spec
    from realdpo.runtime import cpu_only_distributed

    cfg.validate()
    urls = expand_shards(cfg.shards)
    state = PartialState(cpu=cpu_only_distributed())
    spec = load_spec(cfg.model, device=state.device, dtype=torch_dtype(cfg.mixed_precision),
                     group_offload=cfg.group_offload)
    frames, height, width = spec.resolve_size(cfg.frames, cfg.height, cfg.width)
    transformer = None
    if cfg.lora is not None:
        from realdpo.generation.sampling import load_lora

        load_lora(spec, cfg.lora)
        transformer = spec.transformer
    cache = LatentCache(cfg.cache_dir, spec.fingerprint(), frames, height, width, cfg.fps)
    samples = iter_shard_samples(urls, allow_blank_captions=cfg.allow_blank_captions, warn=state.is_main_process)
    n = ensure_cached(spec, samples, cache, frames=frames, height=height, width=width, fps=cfg.fps,
                      k=cfg.negatives, steps=cfg.neg_steps, guidance=cfg.neg_guidance, seed=cfg.seed,
                      round=cfg.round, transformer=transformer, progress=state.is_local_main_process,
                      batch_size=cfg.batch_size, shard=(state.process_index, state.num_processes))
    Console(stderr=True).print(f"rank {state.process_index}/{state.num_processes}: {n} negatives generated; "
                               f"cache: {cache.dir}", markup=False)
    return n


__all__: Sequence[str] = ["ensure_cached", "precompute", "negative_seed", "encode_real"]
