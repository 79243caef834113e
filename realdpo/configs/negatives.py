"""Options of `realdpo negatives`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from realbase.errors import UserError
from realbase.fields import check_numbers, field
from realdpo.configs.common import ModelOptions, NegativeOptions, ShardOptions


@dataclass
class NegativesConfig(ModelOptions, NegativeOptions, ShardOptions):
    shards: list[str] = field(default_factory=list, required=True, help="Curated shards: paths or globs (repeatable; a shell-expanded list works).")
    round: int = field(1, help="Negative round the cache entries belong to (1 = the base model's).")
    batch_size: int = field(1, help="Clips whose i-th negatives are generated together in one pipeline call (the unit "
                            "of work processes share).")
    lora: Optional[Path] = field(None, help="LoRA folder (OUT/lora of `realdpo train`) of the policy that generates round >= 2 negatives.")
    out: Optional[Path] = field(None, help="Same as --cache-dir.")
    group_offload: bool = field(False, help="Keep the transformer in CPU memory and copy it to the accelerator one block "
                                "at a time as it runs (diffusers group offloading), for cards it does not fit; "
                                "costs one host-to-device copy of its weights per sampler step. No effect on a CPU.")

    def validate(self) -> None:
        check_numbers(self)
        self.validate_model_options()
        self.validate_negative_options()
        if not self.shards:
            raise UserError("--shards is required: one or more curated .tar shards or globs")
        if self.round < 1 or self.batch_size < 1:
            raise UserError("--round and --batch-size must be at least 1")
        if self.out is not None:
            if self.cache_dir is not None and Path(self.cache_dir) != Path(self.out):
                raise UserError("--out and --cache-dir name different folders; give one")
            self.cache_dir = self.out
        if self.lora is not None and not Path(self.lora).exists():
            raise UserError(f"--lora not found: {self.lora}")
