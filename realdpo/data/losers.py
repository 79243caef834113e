"""Which cached negatives are a clip's K losers: `count` from each recipe of a plan, in order, with fixed seeds.

The generation side (`realdpo.generation.recipes`) decides how each recipe's negatives are made and names them by a
tag; this module only knows tags, counts and seeds, which is all the training stream needs to find them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from realdpo.data.cache import ClipRef, LatentCache


def negative_seed(seed: int, key: str, index: int, round: int, source: str = "generated") -> int:
    """The seed of negative `index` of clip `key` from `source` in `round`: stable across runs, processes and batch
    sizes (the paper's `generated` negatives keep the seeds they always had)."""
    tag = "" if source == "generated" else f"{source}:"
    digest = hashlib.sha256(f"realdpo-neg:{tag}{seed}:{key}:{index}:{round}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 62) - 1)


@dataclass(frozen=True)
class LoserSet:
    tag: str  # the recipe's cache folder, neg/<tag>/
    source: str  # generated, noised-real, edited-real
    count: int


@dataclass(frozen=True)
class LoserPlan:
    """The K = sum(count) losers of every clip: from each set in order, negative i seeded by negative_seed."""

    sets: tuple[LoserSet, ...]
    seed: int
    round: int = 1

    @property
    def k(self) -> int:
        return sum(s.count for s in self.sets)

    def seeds(self, key: str, part: LoserSet) -> list[int]:
        return [negative_seed(self.seed, key, i, self.round, part.source) for i in range(part.count)]

    def complete(self, cache: LatentCache, ref: ClipRef) -> bool:
        """Whether the clip's real entry and all K negatives are cached."""
        return cache.has_real(ref) and all(cache.has_negative(ref, s.tag, seed) for s in self.sets
                                           for seed in self.seeds(ref.key, s))

    def load(self, cache: LatentCache, ref: ClipRef) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """(real entry, losers [K, ...]) of a cached clip, or None if anything is missing."""
        real = cache.get_real(ref)
        if real is None:
            return None
        losers = []
        for s in self.sets:
            neg = cache.get_negatives(ref, s.tag, self.seeds(ref.key, s))
            if neg is None:
                return None
            losers.append(neg)
        return real, torch.cat(losers)
