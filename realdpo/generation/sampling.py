"""`realdpo sample`: one video from a prompt (and a first frame), or a folder of them from a prompt file, optionally
with a trained LoRA.

With `--prompts` the model loads once; video v = p*N + s is prompt line p at seed --seed+s (N = --seeds-per-prompt),
written as v.mp4, the order `realdpo eval` reads, beside prompts.txt (one line per video) and samples.jsonl. Under
`accelerate launch` the processes share the videos in units of --batch-size consecutive ones (the same units for
any number of processes); videos already there are skipped, and each is written atomically, so a killed run starts
again where it stopped. samples.jsonl records what made each video (model, LoRA and its content hash, prompt, seed,
first frame's hash, sampler settings): a video is reused only when its record equals this run's, and a folder made
with other settings is refused (or, with --overwrite, those videos are made again), so no video is relabelled.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from realbase.errors import UserError, one_line
from realbase.files import write_atomic
from realbase.video import encode_mp4
from realdpo.models.base import ModelSpec
from realdpo.models.frames import to_uint8
from realdpo.runtime import default_device


def _lora_layers_in(folder: Path) -> int | None:
    """How many layers the LoRA files in `folder` adapt (their lora_A / lora_down weights); None for .bin files."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    n = 0
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                n += sum(1 for k in sf.keys() if k.endswith(("lora_A.weight", "lora_down.weight")))
        except Exception as e:  # a damaged file: diffusers' own load below reports it
            raise UserError(f"cannot read LoRA file {f}: {' '.join(str(e).split())[:200]}") from None
    return n


def _adapted_layers(transformer, adapter: str) -> int:
    return sum(1 for m in transformer.modules() if adapter in (getattr(m, "lora_A", None) or {}))


def load_lora(spec: ModelSpec, lora: Path) -> None:
    """Load a diffusers-format LoRA (e.g. `realdpo train`'s OUT/lora) into the spec's transformer. A two-expert
    model's OUT/lora holds one folder per trained expert, `transformer/` and `transformer_2/`; the second loads with
    diffusers' `load_into_transformer_2=True`.

    diffusers applies a LoRA none of whose keys match the model as nothing (with a warning): that is refused, and a
    LoRA of which only some layers match is loaded with a one-line warning."""
    import warnings

    from diffusers.utils import logging as diffusers_logging

    lora = Path(lora)
    parts = {name: lora / name for name in ("transformer", "transformer_2") if (lora / name).is_dir()}
    if parts and not spec.expert_names:
        raise UserError(f"--lora {lora} holds per-expert LoRAs (a Wan 2.2 A14B run); {spec.path} has one transformer")
    pipe = spec.pipeline()
    for name, folder in (parts or {"transformer": lora}).items():
        if folder.is_dir() and not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise UserError(f"--lora folder holds no LoRA weights (*.safetensors): {folder}")
        expected = _lora_layers_in(folder)
        transformer = getattr(pipe, name)
        before = set(getattr(transformer, "peft_config", None) or {})
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # its key-mismatch warnings run to many lines; the counts below say it
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipe.load_lora_weights(str(folder),
                                       **({"load_into_transformer_2": True} if name == "transformer_2" else {}))
        except (ValueError, KeyError, OSError, RuntimeError, AttributeError) as e:
            raise UserError(f"cannot load LoRA {folder} into {spec.family} {spec.task}: "
                            f"{one_line(e, first_line=True)}") from None
        finally:
            diffusers_logging.set_verbosity(verbosity)
        added = sorted(set(getattr(transformer, "peft_config", None) or {}) - before)
        loaded = sum(_adapted_layers(transformer, a) for a in added)
        if loaded == 0:
            raise UserError(f"LoRA {folder} matches no layer of the {spec.family} {name} in {spec.path} "
                            f"(its {expected if expected is not None else 'weight'} layers are for another model)")
        if expected is not None and loaded < expected:
            print(f"warning: LoRA {folder}: only {loaded} of its {expected} layers match the {spec.family} {name}; "
                  "the others are ignored", file=sys.stderr)


def _load(cfg, device):
    """The model (+ LoRA), the run's (frames, height, width) checked against the task, and its fps, guidance and
    negative prompt (the model's where not given)."""
    from realdpo.configs.common import torch_dtype
    from realdpo.models import load_spec

    spec = load_spec(cfg.model, device=device, dtype=torch_dtype(cfg.mixed_precision), task=cfg.task)
    has_images = cfg.image is not None or cfg.images is not None
    if spec.task == "t2v" and has_images:
        raise UserError(f"{'--image' if cfg.image is not None else '--images'} is for image-to-video models; "
                        f"{spec.path} is a text-to-video {spec.family} model")
    if spec.task == "i2v" and not has_images:
        raise UserError(f"{spec.path} is an image-to-video model: give its first frame with --image "
                        "(or --images DIR with --prompts)")
    size = spec.resolve_size(cfg.frames, cfg.height, cfg.width)
    schedule = spec.pipeline().scheduler.config.get("num_train_timesteps")
    if schedule and cfg.steps > schedule:  # CogVideoX's scheduler raises on more; more are no finer anywhere
        raise UserError(f"--steps {cfg.steps} is more than the model's {schedule} training timesteps")
    if cfg.lora is not None:
        load_lora(spec, cfg.lora)
    return spec, size, spec.run_defaults(cfg.fps, cfg.guidance, cfg.negative_prompt)


def content_hash(path: Path) -> str:
    """sha256 over a file, or over a folder's files (relative names and contents, in name order)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path)).encode() if path.is_dir() else b"")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _recorded(out: Path) -> dict[str, dict]:
    """samples.jsonl's rows by video name ({} when absent; unreadable rows are no record)."""
    rows = {}
    try:
        lines = (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("video"), str):
            rows[row["video"]] = row
    return rows


def stale_videos(out: Path, rows: list[dict], overwrite: bool) -> list[Path]:
    """The videos in `out` not made with this run's settings (`rows`, one per video); without `overwrite`, any is a
    one-line refusal naming what differs."""
    wanted = {r["video"]: json.loads(json.dumps(r)) for r in rows}  # as it reads back from samples.jsonl
    old = _recorded(out)
    stale, why = [], None
    for video in sorted(out.glob("*.mp4"), key=lambda p: (len(p.name), p.name)):
        new, was = wanted.get(video.name), old.get(video.name)
        if new is not None and was == new:
            continue
        stale.append(video)
        if why is None:
            if new is None:
                why = f"{video.name} is not one of the {len(rows)} videos this run makes"
            elif was is None:
                why = f"samples.jsonl has no record of {video.name}"
            else:
                keys = sorted(k for k in set(new) | set(was) if new.get(k) != was.get(k))
                why = f"{video.name} was made with another {', '.join(keys)}"
    if stale and not overwrite:
        raise UserError(f"--out {out} holds {len(stale)} video(s) made with other settings ({why}); give another "
                        "--out, or --overwrite to make them again with these settings")
    return stale


def _video_bytes(spec: ModelSpec, latents, fps: float) -> list[bytes]:
    import torch

    if not torch.isfinite(latents).all():
        raise UserError(f"{spec.path}: the generated latents are non-finite (NaN or inf); no video was written")
    return [encode_mp4(to_uint8(v), fps=fps, path=None) for v in spec.decode_latents(latents)]


def sample(cfg) -> Path:
    """Generate `cfg.prompt` and write `cfg.out` (.mp4), or with `cfg.prompts` a folder of videos (see the module
    docstring). Returns the written file or folder."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from realdpo.data.clips import load_image

    cfg.validate()
    if cfg.prompts is not None:
        return sample_prompts(cfg)
    spec, (frames, height, width), run = _load(cfg, default_device())
    images = load_image(cfg.image, height, width)[None] if cfg.image is not None else None
    with Progress(TextColumn("[bold]sampling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("sampling", total=cfg.steps)
        latents = spec.generate_latents([cfg.prompt], {}, num_frames=frames, height=height, width=width,
                                        steps=cfg.steps, guidance=run.guidance, seeds=[cfg.seed], images=images,
                                        negative_prompt=run.negative_prompt,
                                        callback=lambda i, n: bar.update(task, completed=i))
        data = _video_bytes(spec, latents, run.fps)[0]
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, data)
    Console(stderr=True).print(f"wrote {out} ({frames} frames, {width}x{height}, {run.fps:g} fps)", markup=False)
    return out


def sample_prompts(cfg) -> Path:
    """`realdpo sample --prompts FILE --out DIR`: every prompt line x --seeds-per-prompt seeds, model loaded once."""
    import torch
    from accelerate import PartialState
    from rich.console import Console

    from realdpo.data.clips import load_image
    from realdpo.generation.progress import SharedProgress
    from realdpo.runtime import Processes, cpu_only_distributed

    prompts = cfg.read_prompts()
    n = cfg.seeds_per_prompt
    jobs = [{"video": f"{p * n + s}.mp4", "prompt": prompt, "line": p, "seed": cfg.seed + s}
            for p, prompt in enumerate(prompts) for s in range(n)]
    if cfg.images is not None:
        for job in jobs:
            job["image"] = str(cfg.image_of(job["line"]))
    out = Path(cfg.out)
    processes = Processes(PartialState(cpu=cpu_only_distributed()))
    spec, (frames, height, width), run = _load(cfg, processes.state.device)
    settings = {"model": str(Path(spec.path).resolve()), "task": spec.task,
                "lora": str(cfg.lora) if cfg.lora else None,
                "lora_sha256": content_hash(cfg.lora) if cfg.lora else None, "steps": cfg.steps,
                "guidance": run.guidance, "negative_prompt": run.negative_prompt, "fps": run.fps,
                "size": [frames, height, width], "mixed_precision": cfg.mixed_precision}
    for job in jobs:
        if "image" in job:
            job["image_sha256"] = content_hash(Path(job["image"]))
    rows = [{**j, **settings} for j in jobs]
    stale = stale_videos(out, rows, cfg.overwrite) if out.is_dir() else []  # every process: the same verdict
    processes.barrier()
    if processes.main:
        for video in stale:  # before the new record is written: a video is never listed under settings not its own
            video.unlink()
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "prompts.txt", "".join(j["prompt"] + "\n" for j in jobs))
        write_atomic(out / "samples.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    processes.barrier()
    negative_cond = spec.encode_prompts([run.negative_prompt]) if run.guidance > 1 else None  # encoded once
    units = [jobs[i:i + cfg.batch_size] for i in range(0, len(jobs), cfg.batch_size)]
    made = skipped = 0
    with SharedProgress(processes, out, enabled=processes.main, unit="videos") as bar:
        bar.phase("sampling", len(jobs), "videos", videos_per_clip=1)
        for unit in units[processes.rank::processes.world]:
            todo = [j for j in unit if not (out / j["video"]).is_file()]
            bar.count(reused=len(unit) - len(todo))
            skipped += len(unit) - len(todo)
            if not todo:
                continue
            images = None
            if cfg.images is not None:
                images = torch.stack([load_image(j["image"], height, width) for j in todo])
            names = [j["prompt"] for j in todo]
            latents = spec.generate_latents(names, spec.encode_prompts(names), num_frames=frames, height=height,
                                            width=width, steps=cfg.steps, guidance=run.guidance,
                                            seeds=[j["seed"] for j in todo], images=images,
                                            negative_cond=negative_cond)
            for job, data in zip(todo, _video_bytes(spec, latents, run.fps)):
                write_atomic(out / job["video"], data)
                made += 1
                bar.count(videos=1)
        bar.flush()
        processes.barrier()
    bar.close()
    made, skipped = (sum(x) for x in zip(*processes.gather((made, skipped))))
    if processes.main:
        replaced = f", {len(stale)} made with other settings replaced" if stale else ""
        Console(stderr=True).print(f"{out}: {made} videos written, {skipped} already there{replaced} ({len(prompts)} prompts x "
                                   f"{n} seeds; {frames} frames, {width}x{height}, {run.fps:g} fps)", markup=False,
                                   soft_wrap=True)
    return out
