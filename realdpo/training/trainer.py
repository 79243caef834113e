"""`realdpo train`: RealDPO post-training with accelerate (the method and what a run writes: docs/method.md).

The loop, per optimizer step: `grad_accum` micro-batches of (real clip, K cached negatives); each draws one timestep
and one noise tensor per clip, shared by the winner and its losers; the policy runs once on the concatenation with
gradients and the reference once without (`realdpo.method.step`). The trainer talks to the model only through its
`ModelSpec`, so it never branches on the family.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from realbase.errors import UserError
from realbase.files import atomic_dir
from realdpo.configs.train import TrainConfig
from realdpo.runtime import step_progress
from realdpo.training.resolved import BUCKETS, ResolvedRun, checked, config_dict, resolve, spec_options

# options that may change between a run and its --resume (everything else must match)
RESUMABLE_CHANGES = {"steps", "resume", "num_workers", "checkpoint_every", "keep_checkpoints", "validate_every",
                     "val_every",
                     "validation_prompt", "validation_steps", "shards", "cache_dir", "out", "allow_blank_captions",
                     # where memory goes, not what is computed
                     "chunk_size", "keep_graph", "gradient_checkpointing", "offload_encoders"}


@dataclass
class TrainResult:
    out: Path
    lora: Path | None
    transformer: Path | None
    checkpoint: Path | None
    metrics: Path
    plot: Path | None
    steps: int
    first: dict[str, Any] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)  # health warnings raised (kind -> message)


def _round_of(step: int, steps: int, rounds: int) -> int:
    """The negatives round (1-based) that optimizer step `step` (0-based) trains on."""
    return min(rounds, step * rounds // steps + 1)


def _check_out(options: TrainConfig, out: Path) -> Path | None:
    """The checkpoint to resume from (None: a fresh run); refuses to overwrite a run or resume a different one."""
    from realdpo.training.checkpoint import latest_checkpoint, saved_config

    ckpt = latest_checkpoint(out)
    if not options.resume:
        if ckpt is not None or (out / "metrics.jsonl").is_file():
            raise UserError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
        return None
    old = saved_config(ckpt, out) if ckpt is not None else None
    if old is not None:
        new = config_dict(options)
        changed = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k])
        if changed:
            raise UserError(f"--resume with different options than the run in {out}: {', '.join(changed)}")
    return ckpt


VAL_TIMESTEPS = 4  # fixed timesteps (each with its own fixed noise) per held-out clip


def _add_stats(total: dict, stats: dict) -> dict:
    """Sum (sum, count) metric pairs of micro-batches (`realdpo.method.losses.step_stats`)."""
    for k, (s, c) in stats.items():
        s0, c0 = total.get(k, (0.0, 0.0))
        total[k] = (s0 + s, c0 + c)
    return total


class Diverged(UserError):
    """A non-finite loss or gradient: the run stops before the update (exit code 2)."""


# ---- what each phase hands the next ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """`Trainer.setup`: the processes, the model loaded with the run's options, the resolved run."""

    accelerator: Any
    rank: int
    world: int
    main: bool
    fsdp: bool
    spec: Any  # ModelSpec
    run: ResolvedRun
    resume_from: Path | None  # the checkpoint a --resume found (None: a fresh run)
    urls: tuple[str, ...]  # the shard files of --shards

    @property
    def options(self) -> TrainConfig:
        return self.run.options


@dataclass(frozen=True)
class Data:
    """`Trainer.build_data`: the clips of --shards and the latent caches (round 1 in --cache-dir, later rounds in
    OUT/cache, since their negatives come from this run's policy)."""

    samples: Any  # ShardSamples
    cache: Any  # LatentCache
    run_cache: Any

    def cache_of(self, r: int):
        return self.cache if r == 1 else self.run_cache


@dataclass(frozen=True)
class Model:
    """`Trainer.build_model`: the trained module, its trained weights, the reference and the optimizer."""

    transformer: torch.nn.Module
    trainable: dict[str, torch.nn.Parameter]
    reference: Any  # Reference, or None for --loss sft
    policy: Any  # the ErrorModel (or the sharded transformer) the step calls
    synced: Any  # what accelerate wrapped: gradient sync is switched off on it
    optimizer: Any
    lr_scheduler: Any


@dataclass
class Progress:
    """`Trainer.restore`: where the run stands; the loop advances it."""

    step: int
    batch: int
    health: Any  # HealthMonitor
    data_log: Path  # logs/data-rank<r>.jsonl: the clips of every step
    last_ckpt: Path | None
    last_row: dict[str, Any] = field(default_factory=dict)  # this process's; finish re-reads metrics.jsonl

    @property
    def state(self) -> dict[str, int]:
        return {"step": self.step, "batch": self.batch}


@dataclass(frozen=True)
class Round:
    """`Trainer.open_round`: a round's negatives, cached, and the stream of its pairs."""

    number: int
    cache: Any  # LatentCache
    plan: Any  # NegativePlan
    stream: Any  # PairStream
    batches: Any  # iterator over the loader
    val_refs: list  # the held-out clips (--val-pairs) with this round's negatives cached


class Trainer:
    """`realdpo train` in named phases, each returning what the next needs: `setup` (processes, the model, the
    resolved run), `build_data` (clips and caches), `build_model` (adapters, reference, optimizer), then `loop`:
    `restore` (resume), `open_round` (a round's negatives), `train_step`, `log`, `validate`, `checkpoint`, and
    `finish` (the outputs). `train(cfg)` runs them in this order; a test may call them one by one. The user's config
    is never written to: the phases read the run's checked copy (`Setup.run.options`)."""

    def __init__(self, cfg: TrainConfig):
        self.options = checked(cfg)
        self.out = Path(self.options.out)
        self.metrics_path = self.out / "metrics.jsonl"

    def run(self) -> TrainResult:
        s = self.setup()
        return self.loop(s, self.build_data(s), self.build_model(s))

    # ---- setup: processes, the model, the resolved run -------------------------------------------------------
    def setup(self) -> Setup:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, ProjectConfiguration, set_seed

        from realdpo.configs.common import torch_dtype
        from realdpo.data.clips import expand_shards
        from realdpo.models import load_spec
        from realdpo.runtime import cpu_only_distributed

        options, out = self.options, self.out
        urls = tuple(expand_shards(options.shards))
        resume_from = _check_out(options, out)
        acc = Accelerator(
            cpu=cpu_only_distributed(),
            gradient_accumulation_steps=options.grad_accum, mixed_precision=options.mixed_precision,
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
            step_scheduler_with_optimizer=False)
        fsdp = acc.distributed_type == DistributedType.FSDP
        set_seed(options.seed)  # the same LoRA initialisation on every process

        weight_dtype = torch_dtype(options.mixed_precision) if options.lora else torch.float32
        spec = load_spec(options.model, device=acc.device, dtype=weight_dtype, task=options.task,
                         offload_encoders=options.offload_encoders, options=spec_options(options))
        run = resolve(options, spec)
        if fsdp and spec.expert_names:
            raise UserError("FSDP training of a two-expert model (Wan2.2 A14B) is not supported: launch it without "
                            "the FSDP config (data-parallel LoRA)")
        if len(spec.trained_experts) > 1:  # a micro-batch whose timesteps all fall to one expert leaves the other idle
            from accelerate.utils import DistributedDataParallelKwargs

            acc.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
        if acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
        return Setup(acc, acc.process_index, acc.num_processes, acc.is_main_process, fsdp, spec, run, resume_from,
                     urls)

    def build_data(self, s: Setup) -> Data:
        from realdpo.data.cache import LatentCache
        from realdpo.data.stream import ShardSamples

        run = s.run
        size = (s.spec.fingerprint(), run.frames, run.height, run.width, run.fps)
        samples = ShardSamples(list(s.urls), allow_blank_captions=run.options.allow_blank_captions, warn=s.main)
        return Data(samples, LatentCache(run.options.cache_dir, *size), LatentCache(self.out / "cache", *size))

    # ---- the trained module, the reference, the optimizer ----------------------------------------------------
    def build_model(self, s: Setup) -> Model:
        from diffusers.optimization import get_scheduler

        from realdpo.configs.common import torch_dtype
        from realdpo.method.reference import make_reference
        from realdpo.method.step import ErrorModel
        from realdpo.training.optim import make_optimizer

        o, acc, spec = s.options, s.accelerator, s.spec
        transformer = spec.transformer
        if o.fp8_base:
            from realdpo.models.placement import enable_fp8_storage

            enable_fp8_storage(transformer, torch_dtype(o.mixed_precision))
        if o.lora:
            from peft import LoraConfig

            transformer.add_adapter(LoraConfig(r=o.lora_rank, lora_alpha=o.lora_alpha or o.lora_rank,
                                               init_lora_weights=True, target_modules=spec.lora_target_modules))
            for p in transformer.parameters():
                if p.requires_grad:
                    p.data = p.data.float()  # trained weights in fp32 whatever the frozen base's dtype
        else:
            transformer.to(torch.float32).requires_grad_(True)
        if o.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()
        trainable = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
        reference = None if o.loss == "sft" else make_reference(
            transformer, ref=o.ref, lora=o.lora, ema_rate=o.ema_rate, ema_every=o.ema_every,
            autocast_dtype=torch_dtype(o.mixed_precision), ema_rank=o.ema_rank)

        optimizer = make_optimizer(o.optimizer, trainable.values(), lr=o.lr, weight_decay=o.weight_decay)
        schedule = "constant_with_warmup" if o.lr_scheduler == "constant" and o.warmup_steps else o.lr_scheduler
        lr_scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=o.warmup_steps, num_training_steps=o.steps)
        if s.fsdp:
            # FSDP shards the transformer itself (its blocks, then the rest), so that it is the root module whether
            # the step, the negatives or validation call it; the parameters are now shards (DTensors): take them
            # again, and shard a frozen reference copy the same way
            from realdpo.method.reference import FrozenCopyReference
            from realdpo.runtime import shard_like

            sharded, optimizer, lr_scheduler = acc.prepare(transformer, optimizer, lr_scheduler)
            policy, synced = ErrorModel(spec, sharded), sharded
            trainable = {n: p for n, p in sharded.named_parameters() if p.requires_grad}
            if isinstance(reference, FrozenCopyReference):
                units = list(getattr(sharded, "_no_split_modules", None) or [])
                reference.rebind(shard_like(reference.model, sharded, units), sharded)
        else:
            policy, optimizer, lr_scheduler = acc.prepare(ErrorModel(spec, transformer), optimizer, lr_scheduler)
            synced = policy
        # accelerate's own model files would hold the whole transformer: the checkpoint keeps only `trainable`
        acc.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
        acc.register_load_state_pre_hook(lambda models, input_dir: models.clear())
        return Model(transformer, trainable, reference, policy, synced, optimizer, lr_scheduler)

    # ---- resume ----------------------------------------------------------------------------------------------
    def restore(self, s: Setup, m: Model) -> Progress:
        """Continue from the checkpoint `setup` found (or start the logs afresh), record the run, open the trackers."""
        from realbase.files import read_jsonl
        from realdpo.method.reference import Reference
        from realdpo.training.checkpoint import restore_latest, truncate_jsonl
        from realdpo.training.health import HealthMonitor

        o, acc, out = s.options, s.accelerator, self.out
        data_log = out / "logs" / f"data-rank{s.rank}.jsonl"
        resume_from, state = s.resume_from, {"step": 0, "batch": 0}
        if resume_from is not None:  # the newest readable checkpoint (a damaged one is passed over)
            resume_from, state = restore_latest(acc, out, trainable=own_weights(s, m),
                                                reference=m.reference or Reference(), warn=s.main)
            done = int(state["step"])
            if done > o.steps:
                raise UserError(f"--resume: the run in {out} is already complete: {done} steps done, more than "
                                f"--steps {o.steps}; its outputs are in {out} (give --steps above {done} to "
                                "train on)")
            if s.main:
                truncate_jsonl(self.metrics_path, done)
            truncate_jsonl(data_log, done)
            if done == o.steps:
                acc.print(f"the run in {out} is already complete ({done} steps); writing its outputs again")
            else:
                acc.print(f"resuming from {resume_from} (step {done})")
        elif o.resume:
            acc.print(f"no checkpoint in {out / 'checkpoints'}; starting a new run")
            if s.main:
                truncate_jsonl(self.metrics_path, 0)
            truncate_jsonl(data_log, 0)
        data_log.parent.mkdir(parents=True, exist_ok=True)
        if s.main:  # only now: a refused --resume leaves the run's record as it was
            (out / "train_config.json").write_text(json.dumps(s.run.record(), indent=1))
            tracker_cfg = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                           for k, v in s.run.config_dict().items()}
            acc.init_trackers("realdpo", config=tracker_cfg)
        health = HealthMonitor(o.steps, preference=o.loss != "sft")
        if s.main and resume_from is not None and self.metrics_path.is_file():
            health.preload(read_jsonl(self.metrics_path))
        return Progress(int(state["step"]), int(state["batch"]), health, data_log, last_ckpt=resume_from)

    # ---- data: a round's negatives, cached, then its stream ---------------------------------------------------
    def negative_plan(self, spec, r: int):
        """Round r's losers: round 1 from the base model; later rounds from this run's policy at the round's start,
        named by the run's options (not by its weights, which a resumed run reaches again exactly)."""
        import hashlib

        from realdpo.generation.recipes import NegativePlan

        o = self.options
        weights = "base-fp8" if o.fp8_base else "base"  # fp8 storage changes what the base generates
        if r > 1:
            fixed = {k: v for k, v in config_dict(o).items() if k not in RESUMABLE_CHANGES}
            weights = "run:" + hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]
        plan = NegativePlan.from_options(o, spec, round=r, weights=weights)
        return plan.without_losers() if o.loss == "sft" else plan  # SFT trains on the real clips alone

    def prepare_round(self, s: Setup, data: Data, m: Model, r: int):
        """Cache real latents and round-`r` negatives (all processes together); returns (plan, this process's usable
        training clips, the held-out clips)."""
        from realdpo.data.stream import process_share, usable
        from realdpo.generation.negatives import ensure_cached
        from realdpo.method.reference import adapters_disabled
        from realdpo.runtime import Processes

        o, run, acc, samples = s.options, s.run, s.accelerator, data.samples
        c = data.cache_of(r)
        plan = self.negative_plan(s.spec, r)
        if r > 1:  # real entries and encoded prompts do not change between rounds: copy them instead of re-encoding
            if not samples.refs:
                for _ in samples:
                    pass
            for ref in process_share(samples.refs, s.rank, s.world):
                if not data.run_cache.has_real(ref) and (entry := data.cache.get_real(ref)) is not None:
                    data.run_cache.put_real(ref, entry)
            for text in {recipe.negative_prompt for recipe, _ in plan.parts}:
                if data.run_cache.get_prompt(text) is None and (entry := data.cache.get_prompt(text)) is not None:
                    data.run_cache.put_prompt(text, entry)
        # round 1: the base model's negatives (adapters off, in case a resumed run finds its cache entries gone)
        with adapters_disabled(m.transformer) if o.lora and r == 1 else contextlib.nullcontext():
            summary = ensure_cached(s.spec, samples, c, plan, transformer=None if r == 1 else m.transformer,
                                    progress=acc.is_local_main_process, frames=run.frames, height=run.height,
                                    width=run.width, fps=run.fps, batch_size=o.neg_batch_size,
                                    processes=Processes(acc))
        acc.print(f"negatives round {r}: {summary.n_generated} generated, {summary.n_reused} reused, "
                  f"{len(summary.skipped)} clips skipped, {len(summary.failed)} failed")
        held = self.held_out(samples.refs)
        val_refs = usable(c, held, plan.losers)  # every process checks them all (FSDP runs forwards together)
        train_refs = [ref for ref in samples.refs if ref not in held]
        refs = usable(c, process_share(train_refs, s.rank, s.world), plan.losers)
        if o.val_pairs:
            acc.print(f"held out {len(val_refs)} clips for the pair check every {o.val_every} steps: "
                      + ", ".join(ref.key for ref in val_refs))
        counts = acc.gather(torch.tensor([len(refs)], device=acc.device))
        if int(counts.min()) == 0:  # every process raises, none is left waiting in a collective
            raise UserError(f"no usable clips for process {int(counts.argmin())} of {s.world}: "
                            f"{len(samples.refs)} clips in --shards, {run.frames} frames at {run.fps:g} fps "
                            "needed per clip")
        return plan, refs, val_refs

    def held_out(self, refs: list) -> list:
        """The --val-pairs clips: the first N by a hash of (--seed, key), so the same ones in every round."""
        import hashlib

        n = self.options.val_pairs
        if n and n >= len(refs):
            raise UserError(f"--val-pairs {n} leaves nothing to train on: --shards hold {len(refs)} clips")
        order = sorted(refs, key=lambda ref: hashlib.sha256(f"{self.options.seed}:{ref.key}".encode()).hexdigest())
        return order[:n]

    def open_round(self, s: Setup, data: Data, m: Model, progress: Progress, r: int) -> Round:
        from realdpo.data.stream import PairStream, pair_loader

        o = s.options
        plan, refs, val_refs = self.prepare_round(s, data, m, r)
        stream = PairStream(data.cache_of(r), refs, losers=plan.losers, batch_size=o.batch_size, seed=o.seed,
                            rank=s.rank, start=progress.batch)
        m.transformer.train()
        return Round(r, data.cache_of(r), plan, stream, iter(pair_loader(stream, o.num_workers)), val_refs)

    @torch.no_grad()
    def validate_pairs(self, s: Setup, m: Model, rnd: Round) -> dict[str, float]:
        """The held-out clips' preference figures (val_accuracy, val_reward_margin, val_err_diff_w, ...), each clip
        at VAL_TIMESTEPS fixed timesteps and noise tensors, so that successive checks differ only by the policy."""
        import hashlib

        from realdpo.data.stream import collate
        from realdpo.method.losses import stats_means, step_stats
        from realdpo.method.step import build_inputs, draw_noise

        o, acc = s.options, s.accelerator
        stats: dict = {}
        for ref in rnd.val_refs:
            pair = rnd.plan.losers.load(rnd.cache, ref)
            if pair is None:
                continue
            batch = collate([(ref.key, *pair)]).to(acc.device)
            digest = hashlib.sha256(f"realdpo-val:{o.seed}:{ref.key}".encode()).hexdigest()
            gen = torch.Generator().manual_seed(int(digest[:15], 16))
            for _ in range(VAL_TIMESTEPS):
                noise, timesteps = draw_noise(s.spec, batch.winners, o.t_min, o.t_max, gen)
                inputs = build_inputs(batch.winners, batch.losers, batch.cond, noise, timesteps)
                rows = slice(0, len(inputs))
                with acc.autocast():
                    err_ref = m.reference.errors_chunked(s.spec, [inputs.take(rows)])
                    err = m.policy(*inputs.take(rows))
                _add_stats(stats, step_stats(o.loss, err, err_ref, 1, beta=s.run.beta, sft_weight=o.sft_weight))
        keep = ("loss", "accuracy", "reward_margin", "err_diff_w", "err_diff_l", "saturated")
        return {f"val_{k}": v for k, v in stats_means({k: stats[k] for k in keep if k in stats}).items()}

    # ---- one optimizer step ----------------------------------------------------------------------------------
    def groups(self, s: Setup, m: Model, timesteps: torch.Tensor) -> dict[str, torch.Tensor]:
        """The clips of each health group: timestep bucket q1..q4, and for two trained experts the expert."""
        t = timesteps if timesteps.dim() == 1 else timesteps.amax(dim=1)
        edges = torch.tensor(s.run.bucket_edges, dtype=torch.double)
        bucket = torch.bucketize(t.double().cpu(), edges, right=True)
        out = {f"q{i + 1}": bucket == i for i in range(BUCKETS)}
        if len(s.run.trained_experts) > 1:
            high = m.transformer.is_high(timesteps).cpu()
            out.update(expert_high=high, expert_low=~high)
        return out

    def train_step(self, s: Setup, m: Model, rnd: Round, progress: Progress) -> tuple[dict[str, Any], list]:
        """`grad_accum` micro-batches of round `rnd`, one optimizer step, the EMA update; advances `progress` and
        returns the step's metrics row and the clips of its micro-batches."""
        from realdpo.data.stream import derive_seed
        from realdpo.method.losses import stats_means
        from realdpo.method.step import build_inputs, draw_noise, preference_step

        o, acc, spec = s.options, s.accelerator, s.spec
        step, batch_index = progress.step, progress.batch
        stats, t_data, used_keys = {}, 0.0, []
        # one process training adapters: each loser row's gradient is set aside (K copies of the adapters'
        # gradients) instead of a second, no-grad winner pass; wrappers that reduce gradients need the plain order
        params = list(m.trainable.values())
        loser_grads = params if s.world == 1 and o.lora and not s.fsdp else None
        t0 = time.perf_counter()
        for micro in range(o.grad_accum):
            td = time.perf_counter()
            batch = next(rnd.batches).to(acc.device)
            t_data += time.perf_counter() - td
            batch_index += 1
            used_keys.append(batch.keys)
            gen = torch.Generator().manual_seed(derive_seed("realdpo-step", o.seed, s.rank, step, micro))
            noise, timesteps = draw_noise(spec, batch.winners, o.t_min, o.t_max, gen)
            inputs = build_inputs(batch.winners, None if o.loss == "sft" else batch.losers, batch.cond, noise,
                                  timesteps)
            sync = micro == o.grad_accum - 1
            # chunks suppress their own sync only in the micro-batch that syncs: nested in the outer no_sync, an
            # inner one's exit turns sync back on under FSDP2, and the last chunk would reduce-scatter
            chunk_no_sync = (lambda: acc.no_sync(m.synced)) if sync else contextlib.nullcontext
            with (contextlib.nullcontext() if sync else acc.no_sync(m.synced)), acc.autocast():
                _add_stats(stats, preference_step(
                    m.policy, m.reference, spec, inputs, kind=o.loss, beta=s.run.beta,
                    sft_weight=o.sft_weight, chunk_size=o.chunk_size, keep_graph=o.keep_graph,
                    backward=acc.backward, no_sync=chunk_no_sync, groups=self.groups(s, m, timesteps),
                    raw_stats=True, loser_grads=loser_grads))
        if o.max_grad_norm > 0:
            grad_norm = acc.clip_grad_norm_(params, o.max_grad_norm)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
        # every metric as (sum, count), summed over processes: the step's only host sync, before the update so a
        # non-finite loss or gradient never reaches the weights
        one = torch.ones((), device=acc.device)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns the norm as a (replicated) DTensor
            grad_norm = grad_norm.full_tensor()
        stats["grad_norm"] = (torch.as_tensor(grad_norm, device=acc.device).float(), one)
        means = stats_means({n: stats[n] for n in sorted(stats)}, reduce=lambda x: acc.reduce(x, "sum"))
        lr = m.lr_scheduler.get_last_lr()[0]
        row: dict[str, Any] = {"step": step + 1, **means,
                               "lr": lr, "round": rnd.number, "epoch": rnd.stream.stream.epoch_of(batch_index - 1)}
        self.check_finite(s, progress, row)
        m.optimizer.step()
        m.lr_scheduler.step()
        m.optimizer.zero_grad(set_to_none=True)
        step += 1
        progress.step, progress.batch = step, batch_index
        ema_updated = m.reference.update(step) if m.reference is not None else False
        row.update(time_step=time.perf_counter() - t0, time_data=t_data)
        if ema_updated:
            row.update(ema_updated=1, **m.reference.metrics())
        return row, used_keys

    def check_finite(self, s: Setup, progress: Progress, row: dict[str, Any]) -> None:
        """Stop the run at a non-finite loss or gradient norm: the row goes to metrics.jsonl (as null), the update
        is not applied, the checkpoints stay as they are, and no LoRA is written."""
        from realdpo.training.health import non_finite, strict

        bad = non_finite(row)
        if not bad:
            return
        step = row["step"]
        if s.main:
            with open(self.metrics_path, "a") as f:
                # shares counted by comparisons (a NaN compares false) would read as real values: left out
                shown = {k: v for k, v in row.items() if not k.startswith(("accuracy", "saturated", "ties"))}
                f.write(json.dumps({**strict(shown), "non_finite": bad}, allow_nan=False) + "\n")
        s.accelerator.end_training()
        values = ", ".join(f"{k} {row[k]}" for k in bad)
        kept = (f"the last good checkpoint is {progress.last_ckpt}" if progress.last_ckpt is not None
                else "no checkpoint was written before it")
        # at step 1 no update has been applied yet: the base model on the cached inputs is non-finite, not the lr
        hint = ("before any update, so not --lr or --beta: the model's weights or the cached latents are non-finite"
                if step == 1 else "lower --lr or --beta")
        raise Diverged(f"step {step}: training diverged ({values}); stopped before this update, no LoRA written, "
                       f"{kept} ({hint})")

    def log(self, s: Setup, progress: Progress, row: dict[str, Any], keys: list, data_file, bar, task) -> None:
        from realdpo.training.health import strict

        data_file.write(json.dumps({"step": row["step"], "rank": s.rank, "keys": keys}) + "\n")
        data_file.flush()
        warnings = progress.health.observe(row) if s.main else {}
        if warnings:
            row = {**row, "warnings": warnings}
            for message in warnings.values():
                bar.console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)
        if s.main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(strict(row), allow_nan=False) + "\n")
            s.accelerator.log({k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))},
                              step=row["step"])
            info = f"loss {row['loss']:.4f}"
            if "accuracy" in row:
                info += f"  acc {row['accuracy']:.2f}  margin {row['reward_margin']:+.3g}"
            bar.update(task, completed=row["step"], info=info)

    def checkpoint(self, s: Setup, m: Model, progress: Progress, step: int) -> Path:
        from realdpo.training.checkpoint import save_checkpoint

        o = s.options
        return save_checkpoint(s.accelerator, self.out, step, trainable=own_weights(s, m),
                               reference=m.reference.state_dict() if m.reference is not None else {},
                               state={"batch": progress.batch,
                                      "round": _round_of(max(step - 1, 0), o.steps, o.rounds)},
                               keep=o.keep_checkpoints, config=s.run.config_dict())

    @torch.no_grad()
    def validate(self, s: Setup, data: Data, m: Model, step: int) -> None:
        """One validation video with the current policy: the configured prompt or the first clip's caption."""
        from realbase.video import encode_mp4
        from realdpo.models.frames import to_uint8

        o, run, spec, transformer = s.options, s.run, s.spec, m.transformer
        path = self.out / "samples" / f"step-{step:06d}.mp4"
        first = data.samples.first
        prompt = o.validation_prompt or (first.caption if first is not None else "") or "a person"
        images = None
        if spec.task == "i2v" and first is not None:
            from realdpo.data.clips import first_frame

            images = first_frame(first.mp4, run.height, run.width)[None]
        was_training = transformer.training
        transformer.eval()
        try:
            latents = spec.generate_latents([prompt], spec.encode_prompts([prompt]), num_frames=run.frames,
                                            height=run.height, width=run.width, steps=o.validation_steps,
                                            guidance=run.guidance, seeds=[o.seed], transformer=transformer,
                                            images=images, negative_prompt=run.negative_prompt)
            video = spec.decode_latents(latents)[0]
        finally:
            transformer.train(was_training)
        path.parent.mkdir(parents=True, exist_ok=True)
        encode_mp4(to_uint8(video), run.fps, path=path)

    # ---- the loop and the outputs ----------------------------------------------------------------------------
    def loop(self, s: Setup, data: Data, m: Model) -> TrainResult:
        """`restore`, then the steps (a new round's negatives when the round changes), then `finish`."""
        o = s.options
        progress = self.restore(s, m)
        rnd = None
        if progress.step < o.steps:  # the first round's negatives, before the training bar opens
            rnd = self.open_round(s, data, m, progress, _round_of(progress.step, o.steps, o.rounds))
        with step_progress(s.main) as bar, open(progress.data_log, "a") as data_file:
            task = bar.add_task("train", total=o.steps, completed=progress.step, info="")
            while progress.step < o.steps:
                r = _round_of(progress.step, o.steps, o.rounds)
                if r != rnd.number:  # fresh negatives from the current policy
                    rnd = self.open_round(s, data, m, progress, r)
                row, keys = self.train_step(s, m, rnd, progress)
                step = row["step"]
                if rnd.val_refs and (step % o.val_every == 0 or step == o.steps):
                    row.update(self.validate_pairs(s, m, rnd))
                self.log(s, progress, row, keys, data_file, bar, task)
                progress.last_row = row
                if o.validate_every and step % o.validate_every == 0 and s.main:
                    self.validate(s, data, m, step)
                if o.checkpoint_every and step % o.checkpoint_every == 0 and step < o.steps:
                    progress.last_ckpt = self.checkpoint(s, m, progress, step)
        return self.finish(s, m, progress)

    def finish(self, s: Setup, m: Model, progress: Progress) -> TrainResult:
        """The final checkpoint, OUT/lora (or OUT/transformer), the plot; every process's weight checksum."""
        from realbase.files import read_jsonl
        from realdpo.training.plot import plot_metrics

        o, out, step, last_ckpt = s.options, self.out, progress.step, progress.last_ckpt
        with open(progress.data_log, "a") as f:  # every process's final weights, to check they stayed in sync
            f.write(json.dumps({"step": step, "rank": s.rank, "params_checksum": _checksum(m.trainable)}) + "\n")
        if last_ckpt is None or last_ckpt.name != f"step-{step}":
            last_ckpt = self.checkpoint(s, m, progress, step)
        lora_dir = transformer_dir = plot = None
        full = None  # under FSDP every process joins in gathering the whole transformer
        if s.fsdp and not o.lora:
            full = s.accelerator.get_state_dict(m.synced)
        first_row: dict[str, Any] = {}
        last_row = progress.last_row
        if s.main:
            if o.lora:
                lora_dir = save_lora(s.spec, m.transformer, out / "lora")
            else:
                transformer_dir = _atomic_dir(out / "transformer",
                                              lambda d: save_trained(s.spec, m.transformer, d, full))
            plot = plot_metrics(self.metrics_path, out / "training.png")
            rows = read_jsonl(self.metrics_path)  # a resumed run's rows too
            if rows:
                first_row, last_row = rows[0], rows[-1]
        s.accelerator.wait_for_everyone()
        s.accelerator.end_training()
        result = TrainResult(out=out, lora=lora_dir or (out / "lora" if o.lora else None),
                             transformer=transformer_dir or (None if o.lora else out / "transformer"),
                             checkpoint=last_ckpt, metrics=self.metrics_path, plot=plot or out / "training.png",
                             steps=step, first=first_row, last=last_row, warnings=dict(progress.health.raised))
        if s.main:
            self.print_summary(s, progress.health, result)
        return result

    def print_summary(self, s: Setup, health, result: TrainResult) -> None:
        """The end of a run: health at its start and end, where its outputs are, the warnings raised."""
        from realdpo.training.health import HealthMonitor

        if not health.rows:  # a complete run's outputs written again: its rows are in metrics.jsonl
            from realbase.files import read_jsonl

            health = HealthMonitor(s.options.steps, preference=s.options.loss != "sft")
            health.preload(read_jsonl(self.metrics_path))
        lines = [f"trained {result.steps} steps"] + health.summary()
        weights = result.lora if result.lora is not None else result.transformer
        lines += [f"{'LoRA' if result.lora is not None else 'weights'}: {weights}",
                  f"metrics: {result.metrics}", f"plot: {result.plot}",
                  f"logs: {self.out / 'logs'} (tensorboard --logdir {self.out / 'logs'})",
                  f"checkpoint: {result.checkpoint}"]
        raised = health.raised
        lines += [f"warnings ({len(raised)}):", *(f"  {m}" for m in raised.values())] if raised else ["warnings: none"]
        for line in lines:
            s.accelerator.print(line)


def own_weights(s: Setup, m: Model) -> dict[str, torch.Tensor]:
    """The trained weights the checkpoint stores itself: under FSDP accelerate's sharded model files hold them."""
    return {} if s.fsdp else m.trainable


def train(cfg: TrainConfig) -> TrainResult:
    """Train and write OUT/{lora, checkpoints, logs, train_config.json, metrics.jsonl, training.png}."""
    return Trainer(cfg).run()


@torch.no_grad()
def _checksum(params: dict[str, torch.Tensor]) -> float:
    from realdpo.runtime import full_tensor

    return float(sum(full_tensor(p).double().abs().sum().item() + full_tensor(p).double().sum().item()
                     for p in params.values()))


def save_transformer(transformer: torch.nn.Module, out: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """`save_pretrained`, or the config and a gathered state dict (FSDP) in the same layout."""
    if state is None:
        transformer.save_pretrained(out)
        return
    from safetensors.torch import save_file

    transformer.save_config(out)
    save_file({k: v.contiguous() for k, v in state.items()}, str(Path(out) / "diffusion_pytorch_model.safetensors"))


def _atomic_dir(final: Path, write) -> Path:
    """Write a folder under a temporary name, then swap it into place."""
    with atomic_dir(final) as tmp:
        write(tmp)
    return final


def save_trained(spec, transformer: torch.nn.Module, folder: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Fully fine-tuned weights with save_pretrained: into `folder`, or for a two-expert model one subfolder per
    trained expert, named by its pipeline component. `state`: the whole transformer's gathered state dict (FSDP)."""
    if state is not None:
        save_transformer(transformer, folder, state)
        return
    for name, module in spec.trained_modules(transformer).items():
        module.save_pretrained(folder / name if spec.expert_names else folder)


def save_lora(spec, transformer: torch.nn.Module, out: Path) -> Path:
    """The trained adapter in the diffusers LoRA format: `pipe.load_lora_weights(out)` loads it. A two-expert model
    gets one folder per trained expert, named by its pipeline component: `out/transformer` (high noise) and
    `out/transformer_2` (low noise, `pipe.load_lora_weights(out / "transformer_2", load_into_transformer_2=True)`)."""
    from peft.utils import get_peft_model_state_dict

    pipe_cls = type(spec.pipeline())
    modules = spec.trained_modules(transformer)

    def write(folder: Path) -> None:
        for name, module in modules.items():
            target = folder / name if spec.expert_names else folder
            target.mkdir(parents=True, exist_ok=True)
            layers = get_peft_model_state_dict(module, adapter_name="default")
            pipe_cls.save_lora_weights(str(target), transformer_lora_layers=layers, safe_serialization=True,
                                       transformer_lora_adapter_metadata=module.peft_config["default"].to_dict())

    return _atomic_dir(Path(out), write)



def steps_per_round(steps: int, rounds: int) -> list[int]:
    """How many optimizer steps each round gets (for documentation and tests)."""
    counts = [0] * rounds
    for s in range(steps):
        counts[_round_of(s, steps, rounds) - 1] += 1
    return counts


__all__ = ["train", "Trainer", "TrainResult", "Setup", "Data", "Model", "Progress", "Round", "ResolvedRun", "save_lora", "save_trained", "steps_per_round"]
