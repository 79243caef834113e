"""The 'lose' videos of RealDPO, kept as latents, and the real clips' latents and conditioning, cached.

`ensure_cached` is what `realdpo train` calls before optimising (and between rounds, with the current policy);
`precompute` is `realdpo negatives`. Both run on any number of processes (`accelerate launch`) in two phases:

1. clips, shared out one by one (every N-th sample): decode each clip once, encode its latents, caption and first
   frame, and make its `edited-real` negatives from the same decoded frames (VAE only, no sampling); the main
   process encodes the negative prompt once. A barrier.
2. sampled negatives (`generated`, `noised-real`), shared out by work unit: a unit is negative i of up to
   `batch_size` consecutive clips (one pipeline call, guidance batched where the pipeline batches it), and the
   units go round-robin over the processes, so K negatives of few clips still spread over every process. A unit's
   batch is the same whatever the number of processes and whatever a previous run left, so the cache comes out
   bit-identical for any process count and after any kill; a unit only some of whose negatives are cached (a
   kill between its files) is sampled again and only its missing files are written.

Generation reads everything from the cache (prompt embeddings, first-frame conditioning, the encoded negative
prompt): from a full cache of real entries it needs neither the text encoder nor the VAE. A clip that cannot be
decoded is skipped, one whose encoding or generation fails is reported; neither stops the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from realbase.errors import UserError, one_line
from realdpo.data.cache import ClipRef, LatentCache
from realdpo.data.clips import BadClip, ClipSample, decode_clip
from realdpo.data.losers import negative_seed
from realdpo.generation.edits import edit_video
from realdpo.generation.progress import SharedProgress, Summary, merged
from realdpo.generation.recipes import NegativePlan, NegativeRecipe, option_differences
from realdpo.models.base import Cond, ModelSpec
from realdpo.models.frames import to_tensor, to_uint8
from realdpo.runtime import Processes

logger = logging.getLogger(__name__)


@dataclass
class _Unit:
    recipe: NegativeRecipe
    jobs: list[tuple[ClipRef, int]]  # (clip, seed), one pipeline call


def _reason(e: BaseException) -> str:
    return one_line(e, typed=True, first_line=True)


def encode_real(spec: ModelSpec, caption: str, video: torch.Tensor, frames: int) -> dict[str, torch.Tensor]:
    """The cache entry of a real clip ({"latents", cond...}, batch dim 1) from its decoded frames [F, 3, H, W]."""
    entry = {"latents": spec.encode_videos(video[None])}
    entry.update(spec.encode_prompts([caption]))
    entry.update(spec.encode_first_frames(video[:1], frames))
    return entry


@torch.no_grad()
def reencode(spec: ModelSpec, latents: torch.Tensor) -> torch.Tensor:
    """Sampler latents [B, ...] through the winners' path: decoded, rounded to 8-bit frames as a video file holds
    them, and encoded with `encode_videos`, as every real clip is (`--neg-latents reencode`)."""
    out = []
    for z in latents:  # one clip at a time: decoding holds a whole video's activations
        video = spec.decode_latents(z[None])[0]
        out.append(spec.encode_videos(to_tensor(to_uint8(video))[None]))
    return torch.cat(out)


def cached_prompt(spec: ModelSpec, cache: LatentCache, text: str) -> Cond:
    """encode_prompts([text]), encoded once and cached (the negative prompt of every pipeline call)."""
    entry = cache.get_prompt(text)
    if entry is None:
        entry = {k: v.cpu() for k, v in spec.encode_prompts([text]).items()}
        cache.put_prompt(text, entry)
    return entry


class _Run:
    """One ensure_cached call: the plan, the cache, this process's share, the counts."""

    def __init__(self, spec, cache, plan, size, transformer, processes, bar, batch_size):
        self.spec, self.cache, self.plan, self.size = spec, cache, plan, size
        self.transformer, self.p, self.bar, self.batch_size = transformer, processes, bar, batch_size
        self.summary = Summary()
        self.refs: list[ClipRef] = []
        self.captions: dict[ClipRef, str] = {}

    def seed(self, key: str, recipe: NegativeRecipe, index: int) -> int:
        return negative_seed(self.plan.seed, key, index, recipe.round, recipe.source)

    # -- phase 1: clips ------------------------------------------------------------------------------------------------
    def encode_clips(self, samples: Iterable[ClipSample]) -> None:
        edited = [(r, n) for r, n in self.plan.parts if not r.sampled]
        seen: set[str] = set()
        for n, sample in enumerate(samples):
            if sample.key in seen:
                continue
            seen.add(sample.key)
            ref = sample.ref  # every process hashes every clip: phase 2 needs all of them
            self.refs.append(ref)
            self.captions[ref] = sample.caption
            if n % self.p.world != self.p.rank:
                continue
            try:
                self._encode_clip(sample, ref, edited)
            except BadClip as e:
                self.summary.skipped[ref.key] = str(e)
                logger.warning("skipping %s: %s", ref.key, e)
            except UserError:
                raise
            except Exception as e:  # one clip's failure does not stop the run
                self.summary.failed[ref.key] = _reason(e)
                logger.warning("failed on %s: %s", ref.key, _reason(e))
                self.bar.count(failed=1)
            self.bar.count(clips=1)

    def _encode_clip(self, sample: ClipSample, ref: ClipRef, edited) -> None:
        f, h, w, fps = self.size
        video = None
        if not self.cache.has_real(ref):
            video = decode_clip(sample.mp4, f, h, w, fps)
            self.cache.put_real(ref, encode_real(self.spec, sample.caption, video, f))
        for recipe, count in edited:
            seeds = [self.seed(ref.key, recipe, i) for i in range(count)]
            todo = [s for s in seeds if not self.cache.has_negative(ref, recipe.tag, s)]
            self._reused(recipe.tag, count - len(todo))
            if todo and video is None:
                video = decode_clip(sample.mp4, f, h, w, fps)
            for s in todo:  # the clip's own frames re-ordered; one VAE encode each
                frames, _ = edit_video(video, s, recipe.edits, keep_first=self.spec.task == "i2v")
                self.cache.put_negative(ref, recipe.tag, s, self.spec.encode_videos(frames[None]))
                self.summary.generated[recipe.tag] += 1
                self.bar.count(videos=1)

    # -- phase 2: sampled negatives ------------------------------------------------------------------------------------
    def units(self) -> list[_Unit]:
        """Every unit of the launch, in a fixed order: recipe, negative index, consecutive clips."""
        ready = [ref for ref in self.refs if self.cache.has_real(ref)]
        out = []
        for recipe, count in self.plan.parts:
            if not recipe.sampled:
                continue
            for i in range(count):
                for c in range(0, len(ready), self.batch_size):
                    out.append(_Unit(recipe, [(ref, self.seed(ref.key, recipe, i))
                                              for ref in ready[c:c + self.batch_size]]))
        return out

    def missing(self, unit: _Unit) -> list[tuple[ClipRef, int]]:
        return [(ref, s) for ref, s in unit.jobs if not self.cache.has_negative(ref, unit.recipe.tag, s)]

    def run_unit(self, unit: _Unit, negative_cond: Cond | None) -> None:
        tag = unit.recipe.tag
        todo = self.missing(unit)
        self._reused(tag, len(unit.jobs) - len(todo))
        if not todo:
            return
        try:
            results = list(zip(unit.jobs, self.generate(unit.recipe, unit.jobs, negative_cond)))
        except UserError:
            raise
        except Exception as e:
            if len(todo) == 1:
                self._fail(todo[0][0], e)
                return
            logger.warning("a batch of %d failed (%s); generating its clips one at a time", len(unit.jobs), _reason(e))
            results = []
            for job in todo:  # find the clip that fails; the others still get their negative
                try:
                    results.append((job, self.generate(unit.recipe, [job], negative_cond)[0]))
                except UserError:
                    raise
                except Exception as e1:
                    self._fail(job[0], e1)
        want = set(todo)
        for (ref, s), latents in results:
            if (ref, s) in want:
                self.cache.put_negative(ref, tag, s, latents)
                self.summary.generated[tag] += 1
                self.bar.count(videos=1)

    def _reused(self, tag: str, n: int) -> None:
        if n:
            self.summary.reused[tag] += n
            self.bar.count(reused=n)

    def _fail(self, ref: ClipRef, e: BaseException) -> None:
        self.summary.failed.setdefault(ref.key, _reason(e))
        logger.warning("generation failed on %s: %s", ref.key, _reason(e))
        self.bar.count(failed=1)

    def generate(self, recipe: NegativeRecipe, jobs: list[tuple[ClipRef, int]], negative_cond: Cond | None):
        reals = [self.cache.get_real(ref) for ref, _ in jobs]
        for (ref, _), real in zip(jobs, reals):
            if real is None:
                raise RuntimeError(f"the cache entry of {ref.key} vanished from {self.cache.dir}")
        cond = {n: torch.cat([r[n] for r in reals]) for n in reals[0] if n != "latents"}
        init = torch.cat([r["latents"] for r in reals]) if recipe.source == "noised-real" else None
        f, h, w, _ = self.size
        latents = self.spec.generate_latents(
            [self.captions[ref] for ref, _ in jobs], cond, num_frames=f, height=h, width=w, steps=recipe.steps,
            guidance=recipe.guidance, seeds=[s for _, s in jobs], transformer=self.transformer,
            negative_cond=negative_cond, init_latents=init, strength=recipe.strength, sampler=recipe.sampler)
        latents = reencode(self.spec, latents) if recipe.latents == "reencode" else latents
        if not torch.isfinite(latents).all():  # the model or the settings, not the clip: stop the run
            keys = ", ".join(ref.key for ref, _ in jobs)
            raise UserError(f"{self.spec.path}: the {recipe.source} negatives of {keys} came out non-finite (NaN or "
                            f"inf) with {recipe.steps} steps at guidance {recipe.guidance:g}; none of them was cached")
        return latents


def other_recipes(cache: LatentCache, plan: NegativePlan) -> list[str]:
    """A line per sampled recipe of `plan` that the cache has never made while it holds negatives of the same
    source made with other options (`realdpo negatives` and `realdpo train` given different --neg-* options): which
    options differ, so the user can pass the same ones instead of generating everything again."""
    made = cache.recipes()
    lines = []
    for recipe, count in plan.parts:
        if not count or recipe.tag in made:
            continue
        mine = recipe.settings()
        others = [option_differences(mine, s) for s in made.values() if s.get("source") == recipe.source]
        others = [d for d in others if d]
        if others:
            closest = min(others, key=len)
            lines.append(f"no cached {recipe.source} negatives for this run's options, but {cache.dir} holds "
                         f"{len(others)} set(s) made with others; the closest differs in {'; '.join(closest)}. "
                         "Pass the same options to `realdpo negatives` and `realdpo train` to reuse them")
    return lines


def ensure_cached(spec: ModelSpec, samples: Iterable[ClipSample], cache: LatentCache, plan: NegativePlan, *,
                  frames: int, height: int, width: int, fps: float, transformer: torch.nn.Module | None = None,
                  progress: bool = True, batch_size: int = 4, processes: Processes | None = None) -> Summary:
    """Cache every clip's real latents + conditioning and its K losers of `plan`, sharing the work among
    `processes` (all of them call this with the same arguments); returns the launch's Summary (on every process).

    Negative i of a recipe for clip `key` is seeded by `negative_seed(plan.seed, key, i, round, source)`, made with
    `transformer` (None: the loaded base model; later rounds pass the current policy), `batch_size` clips per
    pipeline call; a plan with no losers (`NegativePlan.without_losers`) caches the real clips only. Clips too short for `frames` at `fps`, or undecodable, are skipped with a warning."""
    processes = processes or Processes()
    spec.check_size(frames, height, width)
    if processes.main:
        cache.sweep_temporaries()
        for line in other_recipes(cache, plan):
            logger.warning("%s", line)
        for recipe, count in plan.parts:
            if count:
                cache.write_recipe(recipe.tag, recipe.settings())
    run = _Run(spec, cache, plan, (frames, height, width, fps), transformer, processes, None, batch_size)
    was_training = transformer.training if transformer is not None else False
    if transformer is not None:
        transformer.eval()
    try:
        with SharedProgress(processes, cache.dir, enabled=progress) as bar:
            run.bar = bar
            total = len(samples) if hasattr(samples, "__len__") else None  # type: ignore[arg-type]
            bar.phase("clips", total, "clips")
            run.encode_clips(samples)
            sampled = [r for r, _ in plan.parts if r.sampled]
            negative_prompts = {r.negative_prompt for r in sampled if r.guidance > 1}
            if processes.main:
                for text in negative_prompts:
                    cached_prompt(spec, cache, text)
            processes.barrier()
            units = run.units()
            mine = units[processes.rank::processes.world]
            bar.phase(f"negatives r{plan.round}", sum(len(u.jobs) for u in units) if processes.main else None,
                      "videos", videos_per_clip=sum(n for r, n in plan.parts if r.sampled))
            negative_conds = {text: cache.get_prompt(text) for text in negative_prompts}
            for unit in mine:
                neg = negative_conds.get(unit.recipe.negative_prompt) if unit.recipe.guidance > 1 else None
                run.run_unit(unit, neg)
            bar.flush()
            processes.barrier()  # everything is cached before anyone reads it (and the bar shows the final counts)
        bar.close()
    finally:
        if transformer is not None and was_training:
            transformer.train()
    summary = merged(processes.gather(run.summary))
    if summary.skipped and processes.main:
        logger.warning("%d clip(s) undecodable or too short for %d frames at %g fps were skipped",
                       len(summary.skipped), frames, fps)
    return summary


def print_summary(console, summary: Summary, plan: NegativePlan, shown: int = 20) -> None:
    """What ensure_cached did: a table of generated/reused per recipe, then the skipped and failed clips with the
    reason (the first `shown` of each)."""
    from rich.table import Table

    table = Table(title="negatives")
    for col in ("source", "tag", "generated", "reused"):
        table.add_column(col, justify="right" if col in ("generated", "reused") else "left")
    for recipe, _ in plan.parts:
        table.add_row(recipe.source, recipe.tag, str(summary.generated[recipe.tag]), str(summary.reused[recipe.tag]))
    console.print(table)
    for what, rows in (("skipped", summary.skipped), ("failed", summary.failed)):
        for key, reason in sorted(rows.items())[:shown]:
            console.print(f"{what} {key}: {reason}", markup=False, soft_wrap=True)
        if len(rows) > shown:
            console.print(f"... and {len(rows) - shown} more {what}", markup=False)


def precompute(cfg) -> Summary:
    """`realdpo negatives`: cache real latents, prompt embeddings and the K losers of every clip of the shards.
    Under `accelerate launch` the processes share the clips and the negatives (see the module docstring)."""
    from accelerate import PartialState
    from rich.console import Console

    from realdpo.configs.common import torch_dtype
    from realdpo.data.clips import expand_shards, iter_shard_samples
    from realdpo.generation.recipes import lora_weights_id
    from realdpo.models import SpecOptions, load_spec
    from realdpo.runtime import cpu_only_distributed

    cfg.validate()
    urls = expand_shards(cfg.shards)
    processes = Processes(PartialState(cpu=cpu_only_distributed()))
    spec = load_spec(cfg.model, device=processes.state.device, dtype=torch_dtype(cfg.mixed_precision), task=cfg.task,
                     group_offload=cfg.group_offload, options=SpecOptions(image_noise=cfg.first_frame_noise))
    frames, height, width = spec.resolve_size(cfg.frames, cfg.height, cfg.width)
    fps = spec.run_defaults(cfg.fps).fps
    transformer, weights = None, "base"
    if cfg.lora is not None:
        from realdpo.generation.sampling import load_lora

        load_lora(spec, cfg.lora)
        transformer, weights = spec.transformer, lora_weights_id(cfg.lora)
    plan = NegativePlan.from_options(cfg, spec, round=cfg.round, weights=weights)
    cache = LatentCache(cfg.cache_dir, spec.fingerprint(), frames, height, width, fps)
    samples = iter_shard_samples(urls, allow_blank_captions=cfg.allow_blank_captions, warn=processes.main)
    summary = ensure_cached(spec, samples, cache, plan, frames=frames, height=height, width=width,
                            fps=fps, transformer=transformer, progress=processes.main,
                            batch_size=cfg.batch_size, processes=processes)
    if processes.main:
        console = Console(stderr=True)
        print_summary(console, summary, plan)
        console.print(f"{summary.n_generated} negatives generated, {summary.n_reused} reused, "
                      f"{len(summary.skipped)} clips skipped, {len(summary.failed)} failed; cache: {cache.dir}",
                      markup=False, soft_wrap=True)
    if summary.failed and not summary.n_generated and not summary.n_reused:
        raise UserError(f"no negatives could be made: {len(summary.failed)} clips failed, e.g. "
                        f"{next(iter(summary.failed.items()))}")
    return summary


__all__: Sequence[str] = ["ensure_cached", "precompute", "negative_seed", "encode_real", "cached_prompt", "reencode",
                          "print_summary"]
