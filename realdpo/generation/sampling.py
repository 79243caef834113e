"""`realdpo sample`: generate one video from a prompt (and a first frame), optionally with a trained LoRA."""

from __future__ import annotations

from pathlib import Path

from realaction.errors import UserError
from realaction.video_io import encode_mp4
from realdpo.models.base import ModelSpec
from realdpo.models.frames import to_uint8
from realdpo.runtime import default_device


def load_lora(spec: ModelSpec, lora: Path) -> None:
    """Load a diffusers-format LoRA (e.g. `realdpo train`'s OUT/lora) into the spec's transformer."""
    lora = Path(lora)
    if lora.is_dir() and not any(lora.glob("*.safetensors")) and not any(lora.glob("*.bin")):
        raise UserError(f"--lora folder holds no LoRA weights (*.safetensors): {lora}")
    pipe = spec.pipeline()
    try:
        pipe.load_lora_weights(str(lora))
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load LoRA {lora} into {spec.family} {spec.task}: {first}") from None



def sample(cfg) -> Path:
    """Generate `cfg.prompt` with the model (+ LoRA) and write `cfg.out` (.mp4). Returns the written path."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from realdpo.configs.common import torch_dtype
    from realdpo.data.clips import load_image
    from realdpo.models import load_spec

    cfg.validate()
    spec = load_spec(cfg.model, device=default_device(), dtype=torch_dtype(cfg.mixed_precision),
                     group_offload=cfg.group_offload)
    if spec.task == "t2v" and cfg.image is not None:
        raise UserError(f"--image is for image-to-video models; {spec.path} is a text-to-video {spec.family} model")
    if spec.task == "i2v" and cfg.image is None:
        raise UserError(f"{spec.path} is an image-to-video model: give its first frame with --image")
    frames, height, width = spec.resolve_size(cfg.frames, cfg.height, cfg.width)
    images = load_image(cfg.image, height, width)[None] if cfg.image is not None else None
    if cfg.lora is not None:
        load_lora(spec, cfg.lora)

    with Progress(TextColumn("[bold]sampling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("sampling", total=cfg.steps)
        latents = spec.generate_latents([cfg.prompt], {}, num_frames=frames, height=height, width=width,
                                        steps=cfg.steps, guidance=cfg.guidance, seeds=[cfg.seed], images=images,
                                        negative_prompt=cfg.negative_prompt,
                                        callback=lambda i, n: bar.update(task, completed=i))
        video = spec.decode_latents(latents)[0]
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    encode_mp4(to_uint8(video), fps=cfg.fps, path=out)
    Console(stderr=True).print(f"wrote {out} ({frames} frames, {width}x{height}, {cfg.fps:g} fps)", markup=False)
    return out
