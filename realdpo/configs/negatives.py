"""Options of `realdpo negatives`."""

from __future__ import annotations

from dataclasses import dataclass

from cli.options import field
from realaction.errors import UserError
from realdpo.configs.common import ModelOptions, NegativeOptions


@dataclass
class NegativesConfig(ModelOptions, NegativeOptions):
    shards: list[str] = field(default_factory=list, greedy=True, help="Curated shards: paths or globs (repeatable; a shell-expanded list works).")
    round: int = field(1, help="Negative round the cache entries belong to (1 = the base model's).")
    batch_size: int = field(1, help="Prompts generated together.")

    def validate(self) -> None:
        self.validate_model_options()
        self.validate_negative_options()
        if not self.shards:
            raise UserError("--shards is required: one or more curated .tar shards or globs")
        if self.round < 1 or self.batch_size < 1:
            raise UserError("--round and --batch-size must be at least 1")
