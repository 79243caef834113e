"""Options of `realdpo demo`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from realbase.errors import UserError
from realbase.fields import field


@dataclass
class DemoConfig:
    out: Path = field(Path("demo_out"), help="Folder for the demo's footage, curated shards, run, strip and sample.")
    steps: int = field(300, help="RealDPO training steps on the lab model.")
    lab_clips: int = field(32, help="Real clips of the motion lab rendered and curated for training.")
    prompts: int = field(32, help="Held-out first frames + captions sampled before and after training.")
    seed: int = field(0, at_most=2**32 - 1, help="Random seed (0 to 2^32-1).")

    def validate(self) -> None:
        if min(self.steps, self.lab_clips, self.prompts) < 1:
            raise UserError("--steps, --lab-clips and --prompts must be at least 1")
