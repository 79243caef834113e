"""Options of `realdpo demo`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from realaction.errors import UserError
from realaction.fields import field


@dataclass
class DemoConfig:
    out: Path = field(Path("demo_out"), help="Folder for the demo's footage, curated shards, run and sample.")
    steps: int = field(30, help="Training steps.")
    seed: int = field(0, help="Random seed.")

    def validate(self) -> None:
        if self.steps < 1:
            raise UserError("--steps must be at least 1")
