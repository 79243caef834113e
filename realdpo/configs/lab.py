"""Options of `realdpo lab build`, `realdpo lab render` and `realdpo lab check`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from realbase.errors import UserError
from realbase.fields import check_choices, field

LAB_SETS = ("web", "real", "heldout")


@dataclass
class LabBuildConfig:
    out: Path = field(Path("lab_model"), help="Folder the trained pipeline is saved to (save_pretrained); "
                      "`--out realdpo/lab/model` refreshes the committed weights. Stage outputs in OUT/.build make a "
                      "killed build resumable.")
    seed: int = field(0, at_most=2**32 - 1, help="Seed of the initial weights, the web-mix clips and the training order.")
    vae_steps: int = field(1000, help="VAE optimizer steps (stage 1).")
    vae_batch: int = field(8, help="Clips per VAE step (half as many in the full-frame steps).")
    vae_frames: int = field(9, help="Frames per VAE training clip (a random window of each 9-frame clip; 2k+1).")
    vae_crop: int = field(0, help="Side of the square crops (around a ball) the VAE trains on first (0: full frames only).")
    vae_full_fraction: float = field(0.3, help="Fraction of the VAE steps, at the end, on full 32x32 frames (with --vae-crop).")
    vae_ball_weight: float = field(3.0, help="Extra weight of the pixels a ball covers in the VAE's MSE (a ball is ~6% of a frame).")
    vae_recolor: float = field(0.0, help="Fraction of VAE training clips given a random colour transform (0: none; "
                               "recolouring makes colour a continuous latent direction, and a generator's small latent "
                               "errors then read as hue shifts).")
    vae_latent_noise: float = field(0.1, help="In the second half of the VAE steps, Gaussian noise of this std (in units "
                                    "of the batch's latent std) is added to the sampled latents before decoding, so the "
                                    "decoder turns a generator's imprecise latents into clean balls (0: none).")
    vae_lr: float = field(2e-3, help="Peak VAE learning rate (one-cycle schedule).")
    vae_kl: float = field(1e-4, help="Weight of the VAE's KL term (per latent element, against the pixel MSE).")
    decoder_steps: int = field(0, help="Decoder-only steps after the VAE's, on full frames whose latents get "
                               "Gaussian noise, so the decoder turns a generator's imprecise latents into clean frames "
                               "(the encoder, and so the latents, stay as they are; 0 skips).")
    decoder_noise: float = field(0.25, help="Largest std of that noise, in units of the scaled latents (each clip draws "
                                 "its std uniformly from [0, this]).")
    web_unreal: float = field(0.4, help="Unreal share of the web mix the model learns from (0: physical only, the "
                              "lab's positive control of what the transformer can learn).")
    clips: int = field(1500, help="Web-mix clips encoded for the transformer (stage 2).")
    steps: int = field(3000, help="Transformer (and text encoder) optimizer steps (stage 3).")
    batch: int = field(16, help="Clips per transformer step.")
    lr: float = field(1e-3, help="Peak transformer learning rate (warm-up, then cosine).")
    refine_steps: int = field(2000, help="Steps of a second transformer stage (stage 4) that continues from stage 3's "
                              "saved (EMA) weights on `refine_clips` fresh web-mix clips, with its own warm-up and "
                              "cosine decay from `refine_lr` (0 skips; stage 3 alone left the base at 17 % physical).")
    refine_clips: int = field(1500, help="Web-mix clips encoded for stage 4 (drawn apart from stage 2's).")
    refine_lr: float = field(3e-4, help="Peak learning rate of stage 4.")
    caption_dropout: float = field(0.1, help="Fraction of training captions replaced by the empty prompt (for guidance).")
    ema: float = field(0.999, help="Rate of the weight EMA that is saved (0 saves the raw weights).")
    threads: int = field(2, help="torch threads (0: torch's default; the committed weights were built with 2). "
                         "Weights are reproducible for a given seed and thread count on one CPU model and torch "
                         "build; another CPU rounds differently and trains different weights.")

    def validate(self) -> None:
        for name in ("vae_steps", "vae_batch", "clips", "steps", "batch", "refine_clips"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.refine_steps < 0 or self.refine_lr <= 0:
            raise UserError("--refine-steps must not be negative, --refine-lr must be positive")
        if self.vae_frames < 1 or self.vae_frames > 9 or self.vae_frames % 2 == 0:
            raise UserError("--vae-frames must be odd, between 1 and 9")
        if self.vae_crop and not 16 <= self.vae_crop <= 32 or self.vae_crop % 4:
            raise UserError("--vae-crop must be 0 or a multiple of 4 between 16 and 32")
        if not 0 <= self.vae_recolor <= 1 or self.vae_latent_noise < 0:
            raise UserError("--vae-recolor must be in [0, 1], --vae-latent-noise not negative")
        if not 0 <= self.vae_full_fraction <= 1 or self.vae_ball_weight < 0:
            raise UserError("--vae-full-fraction must be in [0, 1], --vae-ball-weight not negative")
        if self.decoder_steps < 0 or self.decoder_noise < 0:
            raise UserError("--decoder-steps and --decoder-noise must not be negative")
        if self.vae_lr <= 0 or self.lr <= 0 or self.vae_kl < 0:
            raise UserError("--vae-lr and --lr must be positive, --vae-kl not negative")
        if not 0 <= self.caption_dropout < 1 or not 0 <= self.ema < 1:
            raise UserError("--caption-dropout and --ema must be in [0, 1)")
        if self.threads < 0:
            raise UserError("--threads must not be negative")
        if not 0 <= self.web_unreal <= 1:
            raise UserError("--web-unreal must be in [0, 1]")


@dataclass
class LabRenderConfig:
    out: Path = field(Path("lab_footage"), help="Folder for the clips (<set>-<index>.mp4 + .txt caption) and world.jsonl (ground truth).")
    set: str = field("real", choices=LAB_SETS, help=f"Which set: {', '.join(LAB_SETS)} (web: the pretraining mix with unreal clips; real: physical only; heldout: the prompts' clips).")
    count: int = field(64, help="Clips to write.")
    seed: int = field(0, at_most=2**32 - 1, help="Seed of the set.")

    def validate(self) -> None:
        check_choices(self)
        if self.count < 1:
            raise UserError("--count must be at least 1")


@dataclass
class LabCheckConfig:
    seed: int = field(0, help="Seed of the held-out set the prompts (first frames and captions) are drawn from.")
    prompts: int = field(64, help="Held-out prompts to sample (one video each, sampler seed fixed per prompt).")
    model: Optional[Path] = field(None, help="Lab pipeline folder to check (e.g. a rebuilt `realdpo lab build --out`); "
                                  "default: the committed lab model.")
    batch_size: int = field(16, help="Prompts sampled together.")
    threads: int = field(0, help="torch threads (0: torch's default).")

    def validate(self) -> None:
        if self.prompts < 1 or self.batch_size < 1:
            raise UserError("--prompts and --batch-size must be at least 1")
        if self.threads < 0:
            raise UserError("--threads must not be negative")
        if self.model is not None and not (Path(self.model) / "model_index.json").is_file():
            raise UserError(f"--model {self.model}: not a diffusers pipeline folder (no model_index.json)")
