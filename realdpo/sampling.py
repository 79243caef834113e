"""`realdpo sample`: generate one video from a prompt (and a first frame), optionally with a trained LoRA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from realaction.errors import UserError
from realaction.video_io import encode_mp4
from realdpo.models.base import ModelSpec


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


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """[F, 3, H, W] in [-1, 1] -> uint8 [F, H, W, 3]."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def sample(cfg) -> Path:
    """Generate `cfg.prompt` with the model (+ LoRA) and write `cfg.out` (.mp4). Returns the written path."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from realdpo.clips import load_image
    from realdpo.models import load_spec
    from realdpo.negatives import resolve_size, torch_dtype

    cfg.validate()
    device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")
    spec = load_spec(cfg.model, device=device, dtype=torch_dtype(cfg.mixed_precision))
    if spec.task == "t2v" and cfg.image is not None:
        raise UserError(f"--image is for image-to-video models; {spec.path} is a text-to-video {spec.family} model")
    if spec.task == "i2v" and cfg.image is None:
        raise UserError(f"{spec.path} is an image-to-video model: give its first frame with --image")
    frames, height, width = resolve_size(spec, cfg.frames, cfg.height, cfg.width)
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
