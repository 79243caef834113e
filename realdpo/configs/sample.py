"""Options of `realdpo sample`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from realbase.errors import UserError
from realbase.fields import check_numbers, field
from realdpo.configs.common import ModelOptions

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class SampleConfig(ModelOptions):
    prompt: Optional[str] = field(None, help="What the video shows (one video; or give --prompts).")
    prompts: Optional[Path] = field(None, help="Text file, one prompt per line: one video per line and seed, written "
                                    "into the --out folder as 0.mp4, 1.mp4, ... in the order `realdpo eval` reads them, "
                                    "with prompts.txt (one line per video) and samples.jsonl beside them.")
    negative_prompt: Optional[str] = field(None, help="What to steer away from (classifier-free guidance); default is the model's (Wan: its pipelines' standard one, CogVideoX: none).")
    image: Optional[Path] = field(None, help="First frame (PNG/JPG) for image-to-video models.")
    images: Optional[Path] = field(None, help="With --prompts, for image-to-video models: a folder holding the first "
                                   f"frame of prompt line i (0-based) as i.png (or {', '.join(IMAGE_SUFFIXES[1:])}).")
    seeds_per_prompt: int = field(1, help="With --prompts: videos per prompt, at seeds --seed, --seed+1, ...; video "
                                  "p*N+s is prompt line p at seed --seed+s.")
    batch_size: int = field(1, help="With --prompts: videos generated together in one pipeline call.")
    lora: Optional[Path] = field(None, help="LoRA folder written by `realdpo train` (OUT/lora).")
    steps: int = field(50, help="Sampler steps.")
    guidance: Optional[float] = field(None, at_most=100, help="Classifier-free guidance scale; default is the model's (CogVideoX 6, Wan 5).")
    out: Optional[Path] = field(None, help="Output: an .mp4 file for --prompt (default sample.mp4), a folder for --prompts.")
    overwrite: bool = field(False, help="With --prompts: make again the videos in --out that other settings made "
                            "(another model, LoRA, prompt, seed or sampler setting; samples.jsonl records them) and "
                            "delete those beyond this run's; without it such a folder is refused.")
    group_offload: bool = field(False, help="Keep the transformer in CPU memory and copy it to the accelerator one block "
                                "at a time as it runs (diffusers group offloading), for cards it does not fit; "
                                "costs one host-to-device copy of its weights per sampler step. No effect on a CPU.")

    def validate(self) -> None:
        check_numbers(self)
        self.validate_model_options()
        if self.prompts is not None:
            if self.prompt is not None or self.image is not None:
                raise UserError("give either --prompt (and --image) for one video or --prompts (and --images) for many")
            if not Path(self.prompts).is_file():
                raise UserError(f"--prompts not found: {self.prompts}")
            if self.out is None or Path(self.out).suffix.lower() == ".mp4" or Path(self.out).is_file():
                raise UserError("--prompts writes a folder of videos: give --out DIR")
            if self.images is not None and not Path(self.images).is_dir():
                raise UserError(f"--images is not a folder: {self.images}")
            if self.seeds_per_prompt < 1 or self.batch_size < 1:
                raise UserError("--seeds-per-prompt and --batch-size must be at least 1")
            if self.seed + self.seeds_per_prompt - 1 > 2**32 - 1:
                raise UserError("--seed plus --seeds-per-prompt runs past the largest seed, 2^32-1")
        else:
            if not self.prompt or not self.prompt.strip():
                raise UserError("--prompt is required: the text the video should show (or --prompts FILE)")
            if self.images is not None:
                raise UserError("--images goes with --prompts; for one video give --image")
            self.out = Path(self.out) if self.out is not None else Path("sample.mp4")
            if Path(self.out).suffix.lower() != ".mp4":
                raise UserError(f"--out must be an .mp4 file: {self.out}")
        if self.image is not None and not Path(self.image).is_file():
            raise UserError(f"--image not found: {self.image}")
        if self.lora is not None and not Path(self.lora).exists():
            raise UserError(f"--lora not found: {self.lora}")
        if self.steps < 1:
            raise UserError("--steps must be at least 1")
        if self.guidance is not None and self.guidance < 0:
            raise UserError("--guidance must not be negative")

    def read_prompts(self) -> list[str]:
        """The prompt lines of --prompts (trailing blank lines dropped; a blank line in between is an error)."""
        try:
            lines = Path(self.prompts).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UserError(f"--prompts is not UTF-8 text: {self.prompts}") from None
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            raise UserError(f"--prompts has no prompts: {self.prompts}")
        blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
        if blank:
            raise UserError(f"--prompts line {blank[0]} is blank; one prompt per line")
        return [line.strip() for line in lines]

    def image_of(self, index: int) -> Path:
        """The first frame of prompt line `index` in --images."""
        for suffix in IMAGE_SUFFIXES:
            p = Path(self.images) / f"{index}{suffix}"
            if p.is_file():
                return p
        raise UserError(f"--images has no first frame for prompt line {index} ({index}.png or "
                        f"{', '.join(IMAGE_SUFFIXES[1:])}) in {self.images}")
