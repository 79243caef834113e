"""Options of `realdpo sample`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from realaction.errors import UserError
from realaction.fields import field
from realdpo.configs.common import ModelOptions


@dataclass
class SampleConfig(ModelOptions):
    prompt: Optional[str] = field(None, required=True, help="What the video shows.")
    negative_prompt: str = field("", help="What to steer away from (classifier-free guidance).")
    image: Optional[Path] = field(None, help="First frame (PNG/JPG) for image-to-video models.")
    lora: Optional[Path] = field(None, help="LoRA folder written by `realdpo train` (OUT/lora).")
    steps: int = field(50, help="Sampler steps.")
    guidance: float = field(6.0, help="Classifier-free guidance scale.")
    out: Path = field(Path("sample.mp4"), help="Output video file (.mp4).")
    group_offload: bool = field(False, help="Keep the transformer in CPU memory and copy it to the accelerator one block "
                                "at a time as it runs (diffusers group offloading), for cards it does not fit; "
                                "costs one host-to-device copy of its weights per sampler step. No effect on a CPU.")

    def validate(self) -> None:
        self.validate_model_options()
        if not self.prompt or not self.prompt.strip():
            raise UserError("--prompt is required: the text the video should show")
        if self.image is not None and not Path(self.image).is_file():
            raise UserError(f"--image not found: {self.image}")
        if self.lora is not None and not Path(self.lora).exists():
            raise UserError(f"--lora not found: {self.lora}")
        if self.steps < 1:
            raise UserError("--steps must be at least 1")
        if Path(self.out).suffix.lower() != ".mp4":
            raise UserError(f"--out must be an .mp4 file: {self.out}")
