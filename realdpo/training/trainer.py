"""`realdpo train`: RealDPO post-training with accelerate (DESIGN §1, §3.3).

The loop, per optimizer step: `grad_accum` micro-batches of (real clip, K cached negatives); each draws one timestep
and one noise tensor per clip, shared by the winner and its losers; the policy runs once on the concatenation with
gradients and the reference once without (`realdpo.method.step`). The trainer talks to the model only through its
`ModelSpec`, so it never branches on the family.
"""

from __future__ import annotations

import contextlib
import dataclasses
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


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _round_of(step: int, steps: int, rounds: int) -> int:
    """The negatives round (1-based) that optimizer step `step` (0-based) trains on."""
    return min(rounds, step * rounds // steps + 1)


def _check_out(cfg: TrainConfig, out: Path) -> Path | None:
    """The checkpoint to resume from (None: a fresh run); refuses to overwrite a run or resume a different one."""
    from realdpo.training.checkpoint import latest_checkpoint, saved_config

    ckpt = latest_checkpoint(out)
    if not cfg.resume:
        if ckpt is not None or (out / "metrics.jsonl").is_file():
            raise UserError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
        return None
    old = saved_config(ckpt, out) if ckpt is not None else None
    if old is not None:
        new = _config_dict(cfg)
        changed = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k])
        if changed:
            raise UserError(f"--resume with different options than the run in {out}: {', '.join(changed)}")
    return ckpt


VAL_TIMESTEPS = 4  # fixed timesteps (each with its own fixed noise) per held-out clip
BUCKETS = 4  # timestep buckets of the health metrics: equal shares of the trained timesteps, q1 the least noisy


def _add_stats(total: dict, stats: dict) -> dict:
    """Sum (sum, count) metric pairs of micro-batches (`realdpo.method.losses.step_stats`)."""
    for k, (s, c) in stats.items():
        s0, c0 = total.get(k, (0.0, 0.0))
        total[k] = (s0 + s, c0 + c)
    return total


class Diverged(UserError):
    """A non-finite loss or gradient: the run stops before the update (exit code 2)."""


class Trainer:
    """`realdpo train` in named phases: `setup` (processes, model, caches), `build_model` (adapters, reference,
    optimizer), `restore` (resume), then `run`, whose loop calls `open_round` (negatives of a round, cached),
    `train_step`, `log`, `validate` and `checkpoint`, and ends with `finish` (the outputs). `train(cfg)` runs them in
    this order; a test may call them one by one."""

    def __init__(self, cfg: TrainConfig):
        cfg.validate()
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.state = {"step": 0, "batch": 0}
        self.metrics_path = self.out / "metrics.jsonl"
        self.reference = None
        self.stream = None
        self.loader_iter = None
        self.current_round: int | None = None
        self.plan = None  # the current round's NegativePlan
        self.val_refs: list = []  # the held-out clips (--val-pairs) with this round's negatives cached
        self.last_row: dict[str, Any] = {}  # this process's; the main process re-reads metrics.jsonl at the end
        self.step_keys: list[list[str]] = []  # the clips of the last step's micro-batches (logs/data-rank*.jsonl)
        self.health = None  # HealthMonitor, opened in `restore`
        self.last_ckpt: Path | None = None

    # ---- setup: processes, the model, the caches ------------------------------------------------------------
    def setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType, ProjectConfiguration, set_seed

        from realdpo.configs.common import torch_dtype
        from realdpo.data.cache import LatentCache
        from realdpo.data.clips import expand_shards
        from realdpo.data.stream import ShardSamples
        from realdpo.models import load_spec
        from realdpo.models.placement import is_real_model
        from realdpo.runtime import cpu_only_distributed

        cfg, out = self.cfg, self.out
        self.urls = expand_shards(cfg.shards)
        self.resume_from = _check_out(cfg, out)
        self.accelerator = Accelerator(
            cpu=cpu_only_distributed(),
            gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision, log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
            step_scheduler_with_optimizer=False)
        acc = self.accelerator
        self.rank, self.world, self.main = acc.process_index, acc.num_processes, acc.is_main_process
        self.fsdp = acc.distributed_type == DistributedType.FSDP
        set_seed(cfg.seed)  # the same LoRA initialisation on every process

        weight_dtype = torch_dtype(cfg.mixed_precision) if cfg.lora else torch.float32
        spec = self.spec = load_spec(cfg.model, device=acc.device, dtype=weight_dtype, task=cfg.task,
                                     offload_encoders=cfg.offload_encoders)
        spec.image_noise = cfg.first_frame_noise
        if is_real_model(spec.transformer):  # defaults that only pay off at real sizes (README "Memory")
            cfg.gradient_checkpointing = True if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing
            cfg.chunk_size = cfg.chunk_size or 1
        cfg.gradient_checkpointing = bool(cfg.gradient_checkpointing)
        self.frames, self.height, self.width = spec.resolve_size(cfg.frames, cfg.height, cfg.width)
        self.defaults = spec.run_defaults(cfg.fps, cfg.neg_guidance, cfg.neg_prompt, cfg.beta)  # the model's where not given
        spec.set_experts(cfg.train_experts, cfg.expert_ranges(), default="both" if cfg.loss == "sft" else "low",
                         t_range=(cfg.t_min, cfg.t_max))
        if self.fsdp and spec.expert_names:
            raise UserError("FSDP training of a two-expert model (Wan2.2 A14B) is not supported: launch it without "
                            "the FSDP config (data-parallel LoRA)")
        if len(spec.trained_experts) > 1:  # a micro-batch whose timesteps all fall to one expert leaves the other idle
            from accelerate.utils import DistributedDataParallelKwargs

            acc.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
        # the health metrics' timestep buckets: quartiles of the timesteps training draws (in the model's units)
        draws = spec.sample_timesteps(4096, cfg.t_min, cfg.t_max, generator=torch.Generator().manual_seed(0)).double()
        self.bucket_edges = torch.quantile(draws, torch.linspace(0, 1, BUCKETS + 1, dtype=torch.double)[1:-1])
        size = (spec.fingerprint(), self.frames, self.height, self.width, self.defaults.fps)
        self.cache = LatentCache(cfg.cache_dir, *size)
        self.run_cache = LatentCache(out / "cache", *size)  # rounds >= 2: negatives of this run's policy
        self.samples = ShardSamples(self.urls, allow_blank_captions=cfg.allow_blank_captions, warn=self.main)
        if self.main:
            out.mkdir(parents=True, exist_ok=True)

    def resolved(self) -> dict[str, Any]:
        """What the options left to the model became (train_config.json's "resolved")."""
        run, spec = self.defaults, self.spec
        return {"task": spec.task, "frames": self.frames, "height": self.height, "width": self.width, "fps": run.fps,
                "neg_guidance": run.guidance, "neg_prompt": run.negative_prompt, "beta": run.beta,
                "trained_experts": list(spec.trained_experts),
                "health_bucket_edges": [round(float(e), 4) for e in self.bucket_edges]}

    # ---- the trained module, the reference, the optimizer ----------------------------------------------------
    def build_model(self) -> None:
        from diffusers.optimization import get_scheduler

        from realdpo.configs.common import torch_dtype
        from realdpo.method.reference import make_reference
        from realdpo.method.step import ErrorModel
        from realdpo.training.optim import make_optimizer

        cfg, acc = self.cfg, self.accelerator
        transformer = self.transformer = self.spec.transformer
        if cfg.fp8_base:
            from realdpo.models.placement import enable_fp8_storage

            enable_fp8_storage(transformer, torch_dtype(cfg.mixed_precision))
        if cfg.lora:
            from peft import LoraConfig

            transformer.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                               init_lora_weights=True, target_modules=self.spec.lora_target_modules))
            for p in transformer.parameters():
                if p.requires_grad:
                    p.data = p.data.float()  # trained weights in fp32 whatever the frozen base's dtype
        else:
            transformer.to(torch.float32).requires_grad_(True)
        if cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()
        self.trainable = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
        self.reference = None if cfg.loss == "sft" else make_reference(
            transformer, ref=cfg.ref, lora=cfg.lora, ema_rate=cfg.ema_rate, ema_every=cfg.ema_every,
            autocast_dtype=torch_dtype(cfg.mixed_precision), ema_rank=cfg.ema_rank)

        optimizer = make_optimizer(cfg.optimizer, self.trainable.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = "constant_with_warmup" if cfg.lr_scheduler == "constant" and cfg.warmup_steps else cfg.lr_scheduler
        lr_scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
        if self.fsdp:
            # FSDP shards the transformer itself (its blocks, then the rest), so that it is the root module whether
            # the step, the negatives or validation call it; the parameters are now shards (DTensors): take them
            # again, and shard a frozen reference copy the same way
            from realdpo.method.reference import FrozenCopyReference
            from realdpo.runtime import shard_like

            transformer, self.optimizer, self.lr_scheduler = acc.prepare(transformer, optimizer, lr_scheduler)
            self.policy, self.synced = ErrorModel(self.spec, transformer), transformer
            self.trainable = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
            if isinstance(self.reference, FrozenCopyReference):
                units = list(getattr(transformer, "_no_split_modules", None) or [])
                self.reference.rebind(shard_like(self.reference.model, transformer, units), transformer)
        else:
            self.policy, self.optimizer, self.lr_scheduler = acc.prepare(ErrorModel(self.spec, transformer), optimizer,
                                                                         lr_scheduler)
            self.synced = self.policy  # what accelerate wrapped: gradient sync is switched off on it
        # accelerate's own model files would hold the whole transformer: the checkpoint keeps only `trainable`
        acc.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
        acc.register_load_state_pre_hook(lambda models, input_dir: models.clear())

    # ---- resume ----------------------------------------------------------------------------------------------
    def restore(self) -> None:
        """Continue from the checkpoint `setup` found (or start the logs afresh), and open the trackers."""
        from realdpo.method.reference import Reference
        from realdpo.training.checkpoint import restore_latest, truncate_jsonl

        cfg, acc = self.cfg, self.accelerator
        self.data_log = self.out / "logs" / f"data-rank{self.rank}.jsonl"
        if self.resume_from is not None:  # the newest readable checkpoint (a damaged one is passed over)
            self.resume_from, self.state = restore_latest(acc, self.out, trainable=self.own_weights(),
                                                          reference=self.reference or Reference(), warn=self.main)
            done = int(self.state["step"])
            if done > cfg.steps:
                raise UserError(f"--resume: the run in {self.out} is already complete: {done} steps done, more than "
                                f"--steps {cfg.steps}; its outputs are in {self.out} (give --steps above {done} to "
                                "train on)")
            if self.main:
                truncate_jsonl(self.metrics_path, self.state["step"])
            truncate_jsonl(self.data_log, self.state["step"])
            if done == cfg.steps:
                acc.print(f"the run in {self.out} is already complete ({done} steps); writing its outputs again")
            else:
                acc.print(f"resuming from {self.resume_from} (step {done})")
        elif cfg.resume:
            acc.print(f"no checkpoint in {self.out / 'checkpoints'}; starting a new run")
            if self.main:
                truncate_jsonl(self.metrics_path, 0)
            truncate_jsonl(self.data_log, 0)
        self.data_log.parent.mkdir(parents=True, exist_ok=True)
        if self.main:  # only now: a refused --resume leaves the run's record as it was
            (self.out / "train_config.json").write_text(json.dumps({**_config_dict(cfg), "resolved": self.resolved()},
                                                                   indent=1))
            tracker_cfg = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                           for k, v in _config_dict(cfg).items()}
            acc.init_trackers("realdpo", config=tracker_cfg)
        from realbase.files import read_jsonl
        from realdpo.training.health import HealthMonitor

        self.health = HealthMonitor(cfg.steps, preference=cfg.loss != "sft")
        if self.main and self.resume_from is not None and self.metrics_path.is_file():
            self.health.preload(read_jsonl(self.metrics_path))

    # ---- data: a round's negatives, cached, then its stream ---------------------------------------------------
    def negative_plan(self, r: int):
        """Round r's losers: round 1 from the base model; later rounds from this run's policy at the round's start,
        named by the run's options (not by its weights, which a resumed run reaches again exactly)."""
        import hashlib

        from realdpo.generation.recipes import NegativePlan

        weights = "base-fp8" if self.cfg.fp8_base else "base"  # fp8 storage changes what the base generates
        if r > 1:
            fixed = {k: v for k, v in _config_dict(self.cfg).items() if k not in RESUMABLE_CHANGES}
            weights = "run:" + hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]
        plan = NegativePlan.from_options(self.cfg, self.spec, round=r, weights=weights)
        return plan.without_losers() if self.cfg.loss == "sft" else plan  # SFT trains on the real clips alone

    def prepare_round(self, r: int):
        """Cache real latents and round-`r` negatives (all processes together); returns this process's usable clips."""
        from realdpo.data.stream import process_share, usable
        from realdpo.generation.negatives import ensure_cached
        from realdpo.method.reference import adapters_disabled
        from realdpo.runtime import Processes

        cfg, acc, samples = self.cfg, self.accelerator, self.samples
        c = self.cache if r == 1 else self.run_cache
        plan = self.plan = self.negative_plan(r)
        if r > 1:  # real entries and encoded prompts do not change between rounds: copy them instead of re-encoding
            if not samples.refs:
                for _ in samples:
                    pass
            for ref in process_share(samples.refs, self.rank, self.world):
                if not self.run_cache.has_real(ref) and (entry := self.cache.get_real(ref)) is not None:
                    self.run_cache.put_real(ref, entry)
            for text in {recipe.negative_prompt for recipe, _ in plan.parts}:
                if self.run_cache.get_prompt(text) is None and (entry := self.cache.get_prompt(text)) is not None:
                    self.run_cache.put_prompt(text, entry)
        # round 1: the base model's negatives (adapters off, in case a resumed run finds its cache entries gone)
        with adapters_disabled(self.transformer) if cfg.lora and r == 1 else contextlib.nullcontext():
            summary = ensure_cached(self.spec, samples, c, plan, transformer=None if r == 1 else self.transformer,
                                    progress=acc.is_local_main_process, frames=self.frames, height=self.height,
                                    width=self.width, fps=self.defaults.fps, batch_size=cfg.neg_batch_size,
                                    processes=Processes(acc))
        acc.print(f"negatives round {r}: {summary.n_generated} generated, {summary.n_reused} reused, "
                  f"{len(summary.skipped)} clips skipped, {len(summary.failed)} failed")
        held = self.held_out(samples.refs)
        self.val_refs = usable(c, held, plan.losers)  # every process checks them all (FSDP runs forwards together)
        train_refs = [ref for ref in samples.refs if ref not in held]
        refs = usable(c, process_share(train_refs, self.rank, self.world), plan.losers)
        if cfg.val_pairs:
            acc.print(f"held out {len(self.val_refs)} clips for the pair check every {cfg.val_every} steps: "
                      + ", ".join(ref.key for ref in self.val_refs))
        counts = acc.gather(torch.tensor([len(refs)], device=acc.device))
        if int(counts.min()) == 0:  # every process raises, none is left waiting in a collective
            raise UserError(f"no usable clips for process {int(counts.argmin())} of {self.world}: "
                            f"{len(samples.refs)} clips in --shards, {self.frames} frames at {self.defaults.fps:g} fps "
                            "needed per clip")
        return refs

    def held_out(self, refs: list) -> list:
        """The --val-pairs clips: the first N by a hash of (--seed, key), so the same ones in every round."""
        import hashlib

        n = self.cfg.val_pairs
        if n and n >= len(refs):
            raise UserError(f"--val-pairs {n} leaves nothing to train on: --shards hold {len(refs)} clips")
        order = sorted(refs, key=lambda ref: hashlib.sha256(f"{self.cfg.seed}:{ref.key}".encode()).hexdigest())
        return order[:n]

    @torch.no_grad()
    def validate_pairs(self) -> dict[str, float]:
        """The held-out clips' preference figures (val_accuracy, val_reward_margin, val_err_diff_w, ...), each clip
        at VAL_TIMESTEPS fixed timesteps and noise tensors, so that successive checks differ only by the policy."""
        import hashlib

        from realdpo.data.stream import collate
        from realdpo.method.losses import stats_means, step_stats
        from realdpo.method.step import build_inputs, draw_noise

        cfg, acc = self.cfg, self.accelerator
        cache = self.cache if self.current_round == 1 else self.run_cache
        stats: dict = {}
        for ref in self.val_refs:
            pair = self.plan.losers.load(cache, ref)
            if pair is None:
                continue
            batch = collate([(ref.key, *pair)]).to(acc.device)
            digest = hashlib.sha256(f"realdpo-val:{cfg.seed}:{ref.key}".encode()).hexdigest()
            gen = torch.Generator().manual_seed(int(digest[:15], 16))
            for _ in range(VAL_TIMESTEPS):
                noise, timesteps = draw_noise(self.spec, batch.winners, cfg.t_min, cfg.t_max, gen)
                inputs = build_inputs(batch.winners, batch.losers, batch.cond, noise, timesteps)
                rows = slice(0, len(inputs))
                with acc.autocast():
                    err_ref = self.reference.errors_chunked(self.spec, [inputs.take(rows)])
                    err = self.policy(*inputs.take(rows))
                _add_stats(stats, step_stats(cfg.loss, err, err_ref, 1, beta=self.defaults.beta,
                                                  sft_weight=cfg.sft_weight))
        keep = ("loss", "accuracy", "reward_margin", "err_diff_w", "err_diff_l", "saturated")
        return {f"val_{k}": v for k, v in stats_means({k: stats[k] for k in keep if k in stats}).items()}

    def open_round(self, r: int) -> None:
        from realdpo.data.stream import PairStream, pair_loader

        cfg = self.cfg
        refs = self.prepare_round(r)
        self.stream = PairStream(self.cache if r == 1 else self.run_cache, refs, losers=self.plan.losers,
                                 batch_size=cfg.batch_size, seed=cfg.seed, rank=self.rank,
                                 start=int(self.state["batch"]))
        self.transformer.train()
        self.loader_iter = iter(pair_loader(self.stream, cfg.num_workers))
        self.current_round = r

    # ---- one optimizer step ----------------------------------------------------------------------------------
    def groups(self, timesteps: torch.Tensor) -> dict[str, torch.Tensor]:
        """The clips of each health group: timestep bucket q1..q4, and for two trained experts the expert."""
        t = timesteps if timesteps.dim() == 1 else timesteps.amax(dim=1)
        bucket = torch.bucketize(t.double().cpu(), self.bucket_edges, right=True)
        out = {f"q{i + 1}": bucket == i for i in range(BUCKETS)}
        if len(self.spec.trained_experts) > 1:
            high = self.transformer.is_high(timesteps).cpu()
            out.update(expert_high=high, expert_low=~high)
        return out

    def train_step(self) -> dict[str, Any]:
        """`grad_accum` micro-batches, one optimizer step, the EMA update; returns the step's metrics row."""
        from realdpo.data.stream import derive_seed
        from realdpo.method.losses import stats_means
        from realdpo.method.step import build_inputs, draw_noise, preference_step

        cfg, acc, policy = self.cfg, self.accelerator, self.policy
        step = int(self.state["step"])
        r = _round_of(step, cfg.steps, cfg.rounds)
        if r != self.current_round:  # fresh negatives from the current policy
            self.open_round(r)
        batch_index = int(self.state["batch"])
        stats, t_data, used_keys = {}, 0.0, []
        t0 = time.perf_counter()
        for micro in range(cfg.grad_accum):
            td = time.perf_counter()
            batch = next(self.loader_iter).to(acc.device)
            t_data += time.perf_counter() - td
            batch_index += 1
            used_keys.append(batch.keys)
            gen = torch.Generator().manual_seed(derive_seed("realdpo-step", cfg.seed, self.rank, step, micro))
            noise, timesteps = draw_noise(self.spec, batch.winners, cfg.t_min, cfg.t_max, gen)
            inputs = build_inputs(batch.winners, None if cfg.loss == "sft" else batch.losers, batch.cond, noise,
                                  timesteps)
            sync = micro == cfg.grad_accum - 1
            # chunks suppress their own sync only in the micro-batch that syncs: nested in the outer no_sync, an
            # inner one's exit turns sync back on under FSDP2, and the last chunk would reduce-scatter
            chunk_no_sync = (lambda: acc.no_sync(self.synced)) if sync else contextlib.nullcontext
            with (contextlib.nullcontext() if sync else acc.no_sync(self.synced)), acc.autocast():
                _add_stats(stats, preference_step(
                    policy, self.reference, self.spec, inputs, kind=cfg.loss, beta=self.defaults.beta,
                    sft_weight=cfg.sft_weight, chunk_size=cfg.chunk_size, keep_graph=cfg.keep_graph,
                    backward=acc.backward, no_sync=chunk_no_sync, groups=self.groups(timesteps), raw_stats=True))
        params = list(self.trainable.values())
        if cfg.max_grad_norm > 0:
            grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
        # every metric as (sum, count), summed over processes: the step's only host sync, before the update so a
        # non-finite loss or gradient never reaches the weights
        one = torch.ones((), device=acc.device)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2 returns the norm as a (replicated) DTensor
            grad_norm = grad_norm.full_tensor()
        stats["grad_norm"] = (torch.as_tensor(grad_norm, device=acc.device).float(), one)
        means = stats_means({n: stats[n] for n in sorted(stats)}, reduce=lambda x: acc.reduce(x, "sum"))
        lr = self.lr_scheduler.get_last_lr()[0]
        row: dict[str, Any] = {"step": step + 1, **means,
                               "lr": lr, "round": r, "epoch": self.stream.stream.epoch_of(batch_index - 1)}
        self.check_finite(row)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        step += 1
        self.state["step"], self.state["batch"] = step, batch_index
        ema_updated = self.reference.update(step) if self.reference is not None else False
        row.update(time_step=time.perf_counter() - t0, time_data=t_data)
        if ema_updated:
            row.update(ema_updated=1, **self.reference.metrics())
        self.step_keys = used_keys
        return row

    def check_finite(self, row: dict[str, Any]) -> None:
        """Stop the run at a non-finite loss or gradient norm: the row goes to metrics.jsonl (as null), the update
        is not applied, the checkpoints stay as they are, and no LoRA is written."""
        from realdpo.training.health import non_finite, strict

        bad = non_finite(row)
        if not bad:
            return
        step = row["step"]
        if self.main:
            with open(self.metrics_path, "a") as f:
                # shares counted by comparisons (a NaN compares false) would read as real values: left out
                shown = {k: v for k, v in row.items() if not k.startswith(("accuracy", "saturated", "ties"))}
                f.write(json.dumps({**strict(shown), "non_finite": bad}, allow_nan=False) + "\n")
        self.accelerator.end_training()
        values = ", ".join(f"{k} {row[k]}" for k in bad)
        kept = (f"the last good checkpoint is {self.last_ckpt}" if self.last_ckpt is not None
                else "no checkpoint was written before it")
        raise Diverged(f"step {step}: training diverged ({values}); stopped before this update, no LoRA written, "
                       f"{kept} (lower --lr or --beta)")

    def log(self, row: dict[str, Any], data_file, bar, task) -> None:
        from realdpo.training.health import strict

        data_file.write(json.dumps({"step": row["step"], "rank": self.rank, "keys": self.step_keys}) + "\n")
        data_file.flush()
        warnings = self.health.observe(row) if self.main else {}
        if warnings:
            row = {**row, "warnings": warnings}
            for message in warnings.values():
                bar.console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)
        if self.main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(strict(row), allow_nan=False) + "\n")
            self.accelerator.log({k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))},
                                 step=row["step"])
            info = f"loss {row['loss']:.4f}"
            if "accuracy" in row:
                info += f"  acc {row['accuracy']:.2f}  margin {row['reward_margin']:+.3g}"
            bar.update(task, completed=row["step"], info=info)

    def own_weights(self) -> dict[str, torch.Tensor]:
        """The trained weights the checkpoint stores itself: under FSDP accelerate's sharded model files hold them."""
        return {} if self.fsdp else self.trainable

    def checkpoint(self, step: int) -> Path:
        from realdpo.training.checkpoint import save_checkpoint

        cfg = self.cfg
        return save_checkpoint(self.accelerator, self.out, step, trainable=self.own_weights(),
                               reference=self.reference.state_dict() if self.reference is not None else {},
                               state={"batch": self.state["batch"],
                                      "round": _round_of(max(step - 1, 0), cfg.steps, cfg.rounds)},
                               keep=cfg.keep_checkpoints, config=_config_dict(cfg))

    @torch.no_grad()
    def validate(self, step: int) -> None:
        """One validation video with the current policy: the configured prompt or the first clip's caption."""
        from realbase.video import encode_mp4
        from realdpo.models.frames import to_uint8

        cfg, spec, transformer = self.cfg, self.spec, self.transformer
        frames, height, width = self.frames, self.height, self.width
        path = self.out / "samples" / f"step-{step:06d}.mp4"
        first = self.samples.first
        prompt = cfg.validation_prompt or (first.caption if first is not None else "") or "a person"
        images = None
        if spec.task == "i2v" and first is not None:
            from realdpo.data.clips import first_frame

            images = first_frame(first.mp4, height, width)[None]
        was_training = transformer.training
        transformer.eval()
        try:
            latents = spec.generate_latents([prompt], spec.encode_prompts([prompt]), num_frames=frames, height=height,
                                            width=width, steps=cfg.validation_steps, guidance=self.defaults.guidance,
                                            seeds=[cfg.seed], transformer=transformer, images=images,
                                            negative_prompt=self.defaults.negative_prompt)
            video = spec.decode_latents(latents)[0]
        finally:
            transformer.train(was_training)
        path.parent.mkdir(parents=True, exist_ok=True)
        encode_mp4(to_uint8(video), self.defaults.fps, path=path)

    # ---- the loop and the outputs ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        self.setup()
        self.build_model()
        self.restore()
        cfg = self.cfg
        self.last_ckpt = self.resume_from
        if self.state["step"] < cfg.steps:  # the first round's negatives, before the training bar opens
            self.open_round(_round_of(int(self.state["step"]), cfg.steps, cfg.rounds))
        with step_progress(self.main) as bar, open(self.data_log, "a") as data_file:
            task = bar.add_task("train", total=cfg.steps, completed=int(self.state["step"]), info="")
            while self.state["step"] < cfg.steps:
                row = self.train_step()
                step = row["step"]
                if self.val_refs and (step % cfg.val_every == 0 or step == cfg.steps):
                    row.update(self.validate_pairs())
                self.log(row, data_file, bar, task)
                self.last_row = row
                if cfg.validate_every and step % cfg.validate_every == 0 and self.main:
                    self.validate(step)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    self.last_ckpt = self.checkpoint(step)
        return self.finish(self.last_ckpt)

    def finish(self, last_ckpt: Path | None) -> TrainResult:
        """The final checkpoint, OUT/lora (or OUT/transformer), the plot; every process's weight checksum."""
        from realbase.files import read_jsonl
        from realdpo.training.plot import plot_metrics

        cfg, out, step = self.cfg, self.out, int(self.state["step"])
        with open(self.data_log, "a") as f:  # every process's final weights, to check they stayed in sync
            f.write(json.dumps({"step": step, "rank": self.rank, "params_checksum": _checksum(self.trainable)}) + "\n")
        if last_ckpt is None or last_ckpt.name != f"step-{step}":
            last_ckpt = self.checkpoint(step)
        lora_dir = transformer_dir = plot = None
        full = None  # under FSDP every process joins in gathering the whole transformer
        if self.fsdp and not cfg.lora:
            full = self.accelerator.get_state_dict(self.synced)
        first_row: dict[str, Any] = {}
        last_row = self.last_row
        if self.main:
            if cfg.lora:
                lora_dir = save_lora(self.spec, self.transformer, out / "lora")
            else:
                transformer_dir = _atomic_dir(out / "transformer", lambda d: save_trained(self.spec, self.transformer, d, full))
            plot = plot_metrics(self.metrics_path, out / "training.png")
            rows = read_jsonl(self.metrics_path)  # a resumed run's rows too
            if rows:
                first_row, last_row = rows[0], rows[-1]
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        result = TrainResult(out=out, lora=lora_dir or (out / "lora" if cfg.lora else None),
                             transformer=transformer_dir or (None if cfg.lora else out / "transformer"),
                             checkpoint=last_ckpt, metrics=self.metrics_path, plot=plot or out / "training.png",
                             steps=step, first=first_row, last=last_row, warnings=dict(self.health.raised))
        if self.main:
            self.print_summary(result)
        return result

    def print_summary(self, result: TrainResult) -> None:
        """The end of a run: health at its start and end, where its outputs are, the warnings raised."""
        from realdpo.training.health import HealthMonitor

        if not self.health.rows:  # a complete run's outputs written again: its rows are in metrics.jsonl
            from realbase.files import read_jsonl

            self.health = HealthMonitor(self.cfg.steps, preference=self.cfg.loss != "sft")
            self.health.preload(read_jsonl(self.metrics_path))
        lines = [f"trained {result.steps} steps"] + self.health.summary()
        weights = result.lora if result.lora is not None else result.transformer
        lines += [f"{'LoRA' if result.lora is not None else 'weights'}: {weights}",
                  f"metrics: {result.metrics}", f"plot: {result.plot}",
                  f"logs: {self.out / 'logs'} (tensorboard --logdir {self.out / 'logs'})",
                  f"checkpoint: {result.checkpoint}"]
        raised = self.health.raised
        lines += [f"warnings ({len(raised)}):", *(f"  {m}" for m in raised.values())] if raised else ["warnings: none"]
        for line in lines:
            self.accelerator.print(line)


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


__all__ = ["train", "Trainer", "TrainResult", "save_lora", "save_trained", "steps_per_round"]
