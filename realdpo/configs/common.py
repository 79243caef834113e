"""Options shared by the commands that load a model and work on clips."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from realaction.errors import UserError
from realaction.fields import field

MIXED_PRECISION = ("no", "fp16", "bf16")


def torch_dtype(mixed_precision: str):
    """The torch dtype of a --mixed-precision choice (float32 for "no")."""
    import torch  # lazily: `realdpo --help` reads these configs and need not import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


@dataclass
class ModelOptions:
    model: Optional[Path] = field(None, help="Local diffusers pipeline folder (CogVideoX or Wan 2.1); default is the built-in tiny model.")
    frames: Optional[int] = field(None, help="Frames per training/generated clip (CogVideoX: 8k+1, Wan: 4k+1); default is the model's.")
    height: Optional[int] = field(None, help="Clip height in pixels; default is the model's.")
    width: Optional[int] = field(None, help="Clip width in pixels; default is the model's.")
    fps: float = field(8.0, help="Frame rate clips are resampled to before encoding.")
    seed: int = field(0, help="Random seed.")
    mixed_precision: str = field("no", help=f"Mixed precision: {', '.join(MIXED_PRECISION)}.")

    def validate_model_options(self) -> None:
        if self.model is not None and not Path(self.model).is_dir():
            raise UserError(f"--model is not a folder: {self.model}")
        for name in ("frames", "height", "width"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UserError(f"--{name} must be at least 1")
        if self.fps <= 0:
            raise UserError("--fps must be positive")
        if self.mixed_precision not in MIXED_PRECISION:
            raise UserError(f"unknown --mixed-precision {self.mixed_precision!r}; choose one of {', '.join(MIXED_PRECISION)}")


@dataclass
class NegativeOptions:
    negatives: int = field(3, help="Generated 'lose' videos per real clip (K).")
    neg_steps: int = field(50, help="Sampler steps when generating negatives.")
    neg_guidance: float = field(6.0, help="Classifier-free guidance scale when generating negatives.")
    cache_dir: Optional[Path] = field(None, help="Cache of real-clip latents, prompt embeddings and negatives; default $REALDPO_CACHE or ~/.cache/realdpo/latents.")

    def validate_negative_options(self) -> None:
        if self.negatives < 1:
            raise UserError("--negatives must be at least 1")
        if self.neg_steps < 1:
            raise UserError("--neg-steps must be at least 1")
        if self.neg_guidance < 0:
            raise UserError("--neg-guidance must not be negative")


@dataclass
class ShardOptions:
    allow_blank_captions: bool = field(False, help="Keep samples whose caption is blank and train on them with an "
                                       "empty prompt (text-free training); by default each is skipped with a warning.")
