"""Options shared by the commands that load a model and work on clips."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from realbase.errors import UserError
from realbase.fields import check_choices, field

MIXED_PRECISION = ("no", "fp16", "bf16")
TASKS = ("t2v", "i2v")


def torch_dtype(mixed_precision: str):
    """The torch dtype of a --mixed-precision choice (float32 for "no")."""
    import torch  # lazily: `realdpo --help` reads these configs and need not import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


@dataclass
class ModelOptions:
    model: Optional[Path] = field(None, help="Local diffusers pipeline folder (CogVideoX 1.0/1.5 or Wan 2.1/2.2); default is the built-in tiny model.")
    task: Optional[str] = field(None, choices=TASKS, help=f"{' or '.join(TASKS)}, for a model that does both (Wan2.2-TI2V-5B); default: its pipeline's.")
    frames: Optional[int] = field(None, help="Frames per training/generated clip (CogVideoX: 8k+1, Wan: 4k+1); default is the model's.")
    height: Optional[int] = field(None, help="Clip height in pixels; default is the model's.")
    width: Optional[int] = field(None, help="Clip width in pixels; default is the model's.")
    fps: Optional[float] = field(None, at_most=1000, help="Frame rate clips are resampled to and videos written at; default is the model's (CogVideoX 8, CogVideoX 1.5 and Wan 16, Wan2.2-TI2V-5B 24).")
    seed: int = field(0, at_most=2**32 - 1, help="Random seed (0 to 2^32-1).")
    mixed_precision: str = field("no", choices=MIXED_PRECISION, help=f"Mixed precision: {', '.join(MIXED_PRECISION)}.")

    def validate_model_options(self) -> None:
        if self.model is not None and not Path(self.model).is_dir():
            raise UserError(f"--model is not a folder: {self.model}")
        for name in ("frames", "height", "width"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UserError(f"--{name} must be at least 1")
        if self.fps is not None and self.fps <= 0:
            raise UserError("--fps must be positive")
        check_choices(self)


NEGATIVE_SOURCES = ("generated", "noised-real", "edited-real")
EDITS = ("reverse", "shuffle", "stutter", "freeze", "speed")
NEG_LATENTS = ("raw", "reencode")  # how sampled negatives are kept (--neg-latents)
SAMPLERS = ("default", "multistep")


def parse_negatives_from(text: str, k: int) -> list[tuple[str, int]]:
    """`generated` -> [("generated", k)]; `generated:2,edited-real:1` -> counts per source, in order. One source
    may omit its count and takes what the others leave of k; the counts must add up to k."""
    parts, rest = [], None
    for item in (p.strip() for p in str(text).split(",")):
        if not item:
            continue
        name, _, count = item.partition(":")
        name = name.strip()
        if name not in NEGATIVE_SOURCES:
            raise UserError(f"unknown --negatives-from source {name!r}; choose from {', '.join(NEGATIVE_SOURCES)}")
        if any(n == name for n, _ in parts):
            raise UserError(f"--negatives-from names {name} twice")
        if count.strip():
            try:
                n = int(count)
            except ValueError:
                raise UserError(f"--negatives-from {item!r}: the count after ':' must be a whole number") from None
            if n < 1:
                raise UserError(f"--negatives-from {item!r}: a count must be at least 1")
        elif rest is not None:
            raise UserError("--negatives-from: only one source may leave out its count (it takes the rest of --negatives)")
        else:
            rest, n = len(parts), 0
        parts.append((name, n))
    if not parts:
        raise UserError("--negatives-from is empty; give e.g. generated, or generated:2,edited-real:1")
    fixed = sum(n for _, n in parts)
    if rest is not None:
        if fixed >= k:
            raise UserError(f"--negatives-from: the counts take {fixed} of --negatives {k}, leaving none for "
                            f"{parts[rest][0]}")
        parts[rest] = (parts[rest][0], k - fixed)
    elif fixed != k:
        raise UserError(f"--negatives-from asks for {fixed} negatives per clip but --negatives is {k}; "
                        f"give --negatives {fixed}")
    return parts


@dataclass
class NegativeOptions:
    negatives: int = field(3, help="Generated 'lose' videos per real clip (K).")
    negatives_from: str = field("generated", help="Where the K losers come from: generated (sampled from noise with the "
                                "caption and first frame, the paper's way), noised-real (the real clip's latent noised to "
                                "--neg-strength and denoised, SDEdit-style), edited-real (motion-breaking edits of the real "
                                "clip, VAE-encoded, no sampling), or a mix with counts, e.g. generated:2,edited-real:1 (one "
                                "source may leave out its count and takes the rest of --negatives).")
    neg_steps: int = field(50, at_most=1000, help="Sampler steps when generating negatives (noised-real runs about strength x these).")
    neg_guidance: Optional[float] = field(None, at_most=100, help="Classifier-free guidance scale when generating negatives; default "
                                          "is the model's (CogVideoX 6, Wan 5).")
    neg_prompt: Optional[str] = field(None, help="Negative prompt for classifier-free guidance when generating negatives; "
                                      "default is the model's (Wan: its pipelines' standard one, CogVideoX: none).")
    neg_sampler: str = field("default", choices=SAMPLERS, help=f"Sampler for negatives: {', '.join(SAMPLERS)} (default: the model's own "
                             "scheduler; multistep: the family's multistep solver, e.g. with --neg-steps 25).")
    neg_strength: float = field(0.5, help="noised-real: how far the real clip is noised, as a fraction of the schedule "
                                "(0 < s <= 1; 1 is pure noise).")
    neg_edits: list[str] = field(default_factory=lambda: list(EDITS), help="edited-real: the edits each negative draws "
                                 f"one of ({', '.join(EDITS)}).")
    neg_latents: str = field("raw", choices=NEG_LATENTS, help="How sampled negatives (generated, noised-real) are kept: raw (the sampler's "
                             "latents) or reencode (decoded to 8-bit frames and encoded again through the real clips' "
                             "own path, as the official trainer does through its video files: raw sampler latents carry "
                             "more high-frequency energy than encoded ones, a difference DPO could learn instead of "
                             "motion).")
    first_frame_noise: bool = field(False, help="Image-to-video: add the official CogVideoX I2V trainer's pixel noise "
                                    "(sigma = exp(N(-3, 0.5))) to each first frame before encoding its conditioning.")
    cache_dir: Optional[Path] = field(None, help="Cache of real-clip latents, prompt embeddings and negatives; default $REALDPO_CACHE or ~/.cache/realdpo/latents.")

    def negative_mix(self) -> list[tuple[str, int]]:
        """(source, count) per --negatives-from part, counts adding up to --negatives."""
        return parse_negatives_from(self.negatives_from, self.negatives)

    def validate_negative_options(self) -> None:
        if self.negatives < 1:
            raise UserError("--negatives must be at least 1")
        if self.neg_steps < 1:
            raise UserError("--neg-steps must be at least 1")
        if self.neg_guidance is not None and self.neg_guidance < 0:
            raise UserError("--neg-guidance must not be negative")
        check_choices(self)
        if not 0 < self.neg_strength <= 1:
            raise UserError("--neg-strength must be in (0, 1]")
        edits = [e.strip() for item in self.neg_edits for e in str(item).split(",") if e.strip()]
        unknown = sorted(set(edits) - set(EDITS))
        if unknown or not edits:
            raise UserError(f"--neg-edits: unknown or no edit ({', '.join(unknown) or 'none given'}); choose from "
                            f"{', '.join(EDITS)}")
        self.neg_edits = list(dict.fromkeys(edits))
        self.negative_mix()


@dataclass
class ShardOptions:
    allow_blank_captions: bool = field(False, help="Keep samples whose caption is blank and train on them with an "
                                       "empty prompt (text-free training); by default each is skipped with a warning.")
