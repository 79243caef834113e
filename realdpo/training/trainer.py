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
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from realaction.errors import UserError
from realdpo.configs.train import TrainConfig

# options that may change between a run and its --resume (everything else must match)
RESUMABLE_CHANGES = {"steps", "resume", "num_workers", "checkpoint_every", "keep_checkpoints", "validate_every",
                     "validation_prompt", "validation_steps", "shards", "cache_dir", "out"}


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


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def _round_of(step: int, steps: int, rounds: int) -> int:
    """The negatives round (1-based) that optimizer step `step` (0-based) trains on."""
    return min(rounds, step * rounds // steps + 1)


def _check_out(cfg: TrainConfig, out: Path) -> Path | None:
    """The checkpoint to resume from (None: a fresh run); refuses to overwrite a run or resume a different one."""
    from realdpo.training.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(out)
    if not cfg.resume:
        if ckpt is not None or (out / "metrics.jsonl").is_file():
            raise UserError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
        return None
    saved = out / "train_config.json"
    if ckpt is not None and saved.is_file():
        old, new = json.loads(saved.read_text()), _config_dict(cfg)
        changed = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k])
        if changed:
            raise UserError(f"--resume with different options than the run in {out}: {', '.join(changed)}")
    return ckpt


def _mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys()
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys}


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=not enabled)


def train(cfg: TrainConfig) -> TrainResult:
    """Train and write OUT/{lora, checkpoints, logs, train_config.json, metrics.jsonl, training.png}."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed

    from realdpo.configs.common import torch_dtype
    from realdpo.data.cache import LatentCache
    from realdpo.data.clips import expand_shards
    from realdpo.data.stream import PairStream, ShardSamples, derive_seed, pair_loader, process_share, usable_keys
    from realdpo.generation.negatives import ensure_cached
    from realdpo.method.reference import Reference, adapters_disabled, make_reference
    from realdpo.method.step import ErrorModel, build_inputs, draw_noise, preference_step
    from realdpo.models import load_spec
    from realdpo.runtime import cpu_only_distributed
    from realdpo.training.checkpoint import load_checkpoint, save_checkpoint, truncate_jsonl
    from realdpo.training.plot import plot_metrics

    cfg.validate()
    out = Path(cfg.out)
    urls = expand_shards(cfg.shards)
    resume_from = _check_out(cfg, out)

    accelerator = Accelerator(
        cpu=cpu_only_distributed(),
        gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision, log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        step_scheduler_with_optimizer=False)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    set_seed(cfg.seed)  # the same LoRA initialisation on every process

    weight_dtype = torch_dtype(cfg.mixed_precision) if cfg.lora else torch.float32
    spec = load_spec(cfg.model, device=accelerator.device, dtype=weight_dtype)
    frames, height, width = spec.resolve_size(cfg.frames, cfg.height, cfg.width)
    cache = LatentCache(cfg.cache_dir, spec.fingerprint(), frames, height, width, cfg.fps)
    run_cache = LatentCache(out / "cache", spec.fingerprint(), frames, height, width, cfg.fps)  # rounds >= 2: this run's policy

    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(_config_dict(cfg), indent=1))

    # ---- the trained module and the reference -----------------------------------------------------------------
    transformer = spec.transformer
    if cfg.lora:
        from peft import LoraConfig

        transformer.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                           init_lora_weights=True, target_modules=spec.lora_target_modules))
        for p in transformer.parameters():
            if p.requires_grad:
                p.data = p.data.float()  # trained weights in fp32 whatever the frozen base's dtype
    else:
        transformer.to(torch.float32).requires_grad_(True)
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    trainable = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
    reference = None if cfg.loss == "sft" else make_reference(
        transformer, ref=cfg.ref, lora=cfg.lora, ema_rate=cfg.ema_rate, ema_every=cfg.ema_every,
        copy_dtype=torch_dtype(cfg.mixed_precision))

    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(list(trainable.values()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = "constant_with_warmup" if cfg.lr_scheduler == "constant" and cfg.warmup_steps else cfg.lr_scheduler
    lr_scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
    policy, optimizer, lr_scheduler = accelerator.prepare(ErrorModel(spec, transformer), optimizer, lr_scheduler)

    # accelerate's own model files would hold the whole transformer: the checkpoint keeps only `trainable`
    accelerator.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear())

    # ---- data: this process's share of the clips, cached before optimising --------------------------------------
    samples = ShardSamples(urls)
    neg_kwargs = dict(frames=frames, height=height, width=width, fps=cfg.fps, k=cfg.negatives, steps=cfg.neg_steps,
                      guidance=cfg.neg_guidance, seed=cfg.seed, batch_size=cfg.neg_batch_size, shard=(rank, world))

    def prepare_round(r: int) -> list[str]:
        c = cache if r == 1 else run_cache
        if r > 1:  # the real clips' entries do not change between rounds: copy them instead of re-encoding
            if not samples.keys:
                for _ in samples:
                    pass
            for key in process_share(samples.keys, rank, world):
                if not run_cache.has_real(key) and (entry := cache.get_real(key)) is not None:
                    run_cache.put_real(key, entry)
        # round 1: the base model's negatives (adapters off, in case a resumed run finds its cache entries gone)
        with adapters_disabled(transformer) if cfg.lora and r == 1 else contextlib.nullcontext():
            ensure_cached(spec, samples, c, round=r, transformer=None if r == 1 else transformer,
                          progress=accelerator.is_local_main_process, **neg_kwargs)
        keys = usable_keys(c, process_share(samples.keys, rank, world), r, cfg.negatives)
        counts = accelerator.gather(torch.tensor([len(keys)], device=accelerator.device))
        if int(counts.min()) == 0:  # every process raises, none is left waiting in a collective
            raise UserError(f"no usable clips for process {int(counts.argmin())} of {world}: {len(samples.keys)} clips "
                            f"in --shards, {frames} frames at {cfg.fps:g} fps needed per clip")
        return keys

    state = {"step": 0, "batch": 0}
    metrics_path = out / "metrics.jsonl"
    data_log = out / "logs" / f"data-rank{rank}.jsonl"
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from, trainable=trainable, reference=reference or Reference())
        if main:
            truncate_jsonl(metrics_path, state["step"])
        truncate_jsonl(data_log, state["step"])
        accelerator.print(f"resuming from {resume_from} (step {state['step']})")
    elif cfg.resume:
        accelerator.print(f"no checkpoint in {out / 'checkpoints'}; starting a new run")
        if main:
            truncate_jsonl(metrics_path, 0)
        truncate_jsonl(data_log, 0)

    data_log.parent.mkdir(parents=True, exist_ok=True)
    if main:
        tracker_cfg = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in _config_dict(cfg).items()}
        accelerator.init_trackers("realdpo", config=tracker_cfg)

    def checkpoint(step: int) -> Path:
        return save_checkpoint(accelerator, out, step, trainable=trainable,
                               reference=reference.state_dict() if reference is not None else {},
                               state={"batch": state["batch"], "round": _round_of(max(step - 1, 0), cfg.steps, cfg.rounds)},
                               keep=cfg.keep_checkpoints)

    # ---- the loop ---------------------------------------------------------------------------------------------
    step, batch_index = int(state["step"]), int(state["batch"])

    def open_round(r: int) -> tuple[PairStream, Any]:
        stream = PairStream(cache if r == 1 else run_cache, prepare_round(r), round=r, k=cfg.negatives,
                            batch_size=cfg.batch_size, seed=cfg.seed, rank=rank, start=batch_index)
        transformer.train()
        return stream, iter(pair_loader(stream, cfg.num_workers))

    current_round = _round_of(step, cfg.steps, cfg.rounds) if step < cfg.steps else None
    stream, loader_iter = open_round(current_round) if current_round else (None, None)
    first_row: dict[str, Any] = {}
    last_row: dict[str, Any] = {}  # main process: both re-read from metrics.jsonl at the end (a resumed run's too)
    last_ckpt: Path | None = resume_from
    kind = cfg.loss
    with _progress(main) as bar, open(data_log, "a") as data_file:
        task = bar.add_task("train", total=cfg.steps, completed=step, info="")
        while step < cfg.steps:
            r = _round_of(step, cfg.steps, cfg.rounds)
            if r != current_round:  # fresh negatives from the current policy
                stream, loader_iter = open_round(r)
                current_round = r
            micro_rows, t_data, used_keys = [], 0.0, []
            t0 = time.perf_counter()
            for micro in range(cfg.grad_accum):
                td = time.perf_counter()
                batch = next(loader_iter).to(accelerator.device)
                t_data += time.perf_counter() - td
                batch_index += 1
                used_keys.append(batch.keys)
                gen = torch.Generator().manual_seed(derive_seed("realdpo-step", cfg.seed, rank, step, micro))
                noise, timesteps = draw_noise(spec, batch.winners, cfg.t_min, cfg.t_max, gen)
                inputs = build_inputs(batch.winners, None if kind == "sft" else batch.losers, batch.cond, noise, timesteps)
                sync = micro == cfg.grad_accum - 1
                with (contextlib.nullcontext() if sync else accelerator.no_sync(policy)), accelerator.autocast():
                    micro_rows.append(preference_step(
                        policy, reference, spec, inputs, kind=kind, beta=cfg.beta, sft_weight=cfg.sft_weight,
                        chunk_size=cfg.chunk_size, keep_graph=cfg.gradient_checkpointing, backward=accelerator.backward,
                        no_sync=lambda: accelerator.no_sync(policy)))
            params = list(trainable.values())
            if cfg.max_grad_norm > 0:
                grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            else:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
            lr = lr_scheduler.get_last_lr()[0]
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            state["step"], state["batch"] = step, batch_index
            ema_updated = reference.update(step) if reference is not None else False

            local = _mean_metrics(micro_rows)
            names = sorted(local)
            vals = accelerator.reduce(torch.tensor([local[n] for n in names], device=accelerator.device), "mean")
            row: dict[str, Any] = {"step": step, **{n: float(v) for n, v in zip(names, vals.tolist())},
                                   "grad_norm": float(grad_norm), "lr": lr, "round": r,
                                   "epoch": stream.stream.epoch_of(batch_index - 1),
                                   "time_step": time.perf_counter() - t0, "time_data": t_data}
            if ema_updated:
                row["ema_updated"] = 1
            data_file.write(json.dumps({"step": step, "rank": rank, "keys": used_keys}) + "\n")
            data_file.flush()
            if main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)
                info = f"loss {row['loss']:.4f}"
                if "accuracy" in row:
                    info += f"  acc {row['accuracy']:.2f}  margin {row['reward_margin']:+.3g}"
                bar.update(task, completed=step, info=info)
            last_row = row

            if cfg.validate_every and step % cfg.validate_every == 0 and main:
                _validate(cfg, spec, transformer, samples, out / "samples" / f"step-{step:06d}.mp4",
                          frames, height, width)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                last_ckpt = checkpoint(step)

    # ---- outputs ----------------------------------------------------------------------------------------------
    with open(data_log, "a") as f:  # every process's final weights, to check they stayed in sync
        f.write(json.dumps({"step": step, "rank": rank, "params_checksum": _checksum(trainable)}) + "\n")
    if last_ckpt is None or last_ckpt.name != f"step-{step}":
        last_ckpt = checkpoint(step)
    lora_dir = transformer_dir = plot = None
    if main:
        if cfg.lora:
            lora_dir = save_lora(spec, transformer, out / "lora")
        else:
            transformer_dir = _atomic_dir(out / "transformer", lambda d: transformer.save_pretrained(d))
        plot = plot_metrics(metrics_path, out / "training.png")
        from realaction.shards import read_jsonl

        rows = read_jsonl(metrics_path)
        if rows:
            first_row, last_row = rows[0], rows[-1]
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(out=out, lora=lora_dir or (out / "lora" if cfg.lora else None),
                       transformer=transformer_dir or (None if cfg.lora else out / "transformer"),
                       checkpoint=last_ckpt, metrics=metrics_path, plot=plot or out / "training.png", steps=step,
                       first=first_row, last=last_row)


@torch.no_grad()
def _checksum(params: dict[str, torch.Tensor]) -> float:
    return float(sum(p.double().abs().sum().item() + p.double().sum().item() for p in params.values()))


def _atomic_dir(final: Path, write) -> Path:
    """Write a folder under a temporary name, then swap it into place."""
    from realdpo.training.checkpoint import replace_dir

    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    replace_dir(tmp, final)
    return final


def save_lora(spec, transformer: torch.nn.Module, out: Path) -> Path:
    """The trained adapter in the diffusers LoRA format: `pipe.load_lora_weights(out)` loads it."""
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(transformer, adapter_name="default")
    metadata = transformer.peft_config["default"].to_dict()
    pipe_cls = type(spec.pipeline())
    return _atomic_dir(Path(out), lambda d: pipe_cls.save_lora_weights(
        str(d), transformer_lora_layers=layers, transformer_lora_adapter_metadata=metadata, safe_serialization=True))


@torch.no_grad()
def _validate(cfg: TrainConfig, spec, transformer, samples, path: Path, frames: int, height: int, width: int) -> None:
    """One validation video with the current policy: the configured prompt or the first clip's caption."""
    from realaction.video_io import encode_mp4
    from realdpo.models.frames import to_uint8

    first = samples.first
    prompt = cfg.validation_prompt or (first.caption if first is not None else "") or "a person"
    images = None
    if spec.task == "i2v" and first is not None:
        from realdpo.data.clips import first_frame

        images = first_frame(first.mp4, height, width)[None]
    was_training = transformer.training
    transformer.eval()
    try:
        latents = spec.generate_latents([prompt], spec.encode_prompts([prompt]), num_frames=frames, height=height,
                                        width=width, steps=cfg.validation_steps, guidance=cfg.neg_guidance,
                                        seeds=[cfg.seed], transformer=transformer, images=images)
        video = spec.decode_latents(latents)[0]
    finally:
        transformer.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    encode_mp4(to_uint8(video), cfg.fps, path=path)


def steps_per_round(steps: int, rounds: int) -> list[int]:
    """How many optimizer steps each round gets (for documentation and tests)."""
    counts = [0] * rounds
    for s in range(steps):
        counts[_round_of(s, steps, rounds) - 1] += 1
    return counts


__all__ = ["train", "TrainResult", "save_lora", "steps_per_round"]
