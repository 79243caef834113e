"""How a set of negatives is made, and the name it is cached under.

A `NegativeRecipe` holds every setting its negatives depend on; its `tag` (the cache folder) hashes exactly those,
so changing --neg-steps changes the tag of `generated` negatives but not of `edited-real` ones, which never sample.
A `NegativePlan` is a clip's K losers: (recipe, count) per --negatives-from part, plus the run seed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from realdpo.configs.common import EDITS, NegativeOptions
from realdpo.data.losers import LoserPlan, LoserSet

RECIPE_VERSION = 1  # bump when the way negatives are made changes in a way settings do not show


@dataclass(frozen=True)
class NegativeRecipe:
    source: str  # generated, noised-real, edited-real
    round: int = 1
    steps: int = 50
    guidance: float = 6.0
    negative_prompt: str = ""
    sampler: str = "default"
    strength: float = 1.0  # noised-real
    edits: tuple[str, ...] = field(default=EDITS)  # edited-real
    weights: str = "base"  # the generating transformer: "base", "lora:<hash>", or a run's policy at a round
    latents: str = "raw"  # sampled sources: "raw" sampler latents or "reencode"d through the winners' VAE path

    @property
    def sampled(self) -> bool:
        return self.source != "edited-real"

    def settings(self) -> dict:
        """The settings this recipe's negatives depend on (and nothing else)."""
        out: dict = {"version": RECIPE_VERSION, "source": self.source, "round": self.round}
        if self.source == "edited-real":
            out["edits"] = list(self.edits)
            return out
        out.update(sampler=self.sampler, steps=self.steps, guidance=self.guidance,
                   negative_prompt=self.negative_prompt, weights=self.weights)
        if self.source == "noised-real":
            out["strength"] = self.strength
        if self.latents != "raw":  # (raw negatives keep the tags they had before the option existed)
            out["latents"] = self.latents
        return out

    @property
    def tag(self) -> str:
        digest = hashlib.sha256(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:12]
        return f"r{self.round}-{self.source}-{digest}"


@dataclass(frozen=True)
class NegativePlan:
    parts: tuple[tuple[NegativeRecipe, int], ...]
    seed: int

    @property
    def round(self) -> int:
        return self.parts[0][0].round

    @property
    def k(self) -> int:
        return sum(n for _, n in self.parts)

    @property
    def losers(self) -> LoserPlan:
        """What the training stream needs to find the K losers in the cache."""
        return LoserPlan(tuple(LoserSet(r.tag, r.source, n) for r, n in self.parts), self.seed, self.round)

    def without_losers(self) -> "NegativePlan":
        """The same recipes with no losers: caching it encodes the real clips only (`--loss sft` trains on none)."""
        return NegativePlan(tuple((recipe, 0) for recipe, _ in self.parts), self.seed)

    @classmethod
    def from_options(cls, opts: NegativeOptions, spec, *, round: int = 1, weights: str = "base") -> "NegativePlan":
        """The plan of --negatives/--negatives-from and the --neg-* options, for `spec`'s model at `round`."""
        guidance, prompt = generation_defaults(opts, spec)
        parts = []
        for source, count in opts.negative_mix():
            parts.append((NegativeRecipe(source, round=round, steps=opts.neg_steps, guidance=guidance,
                                         negative_prompt=prompt, sampler=opts.neg_sampler,
                                         strength=float(opts.neg_strength) if source == "noised-real" else 1.0,
                                         edits=tuple(opts.neg_edits), weights=weights,
                                         latents=opts.neg_latents), count))
        return cls(tuple(parts), int(opts.seed))


# recipe settings -> the option that sets them
_OPTION_OF = {"steps": "--neg-steps", "guidance": "--neg-guidance", "negative_prompt": "--neg-prompt",
              "sampler": "--neg-sampler", "strength": "--neg-strength", "edits": "--neg-edits",
              "latents": "--neg-latents", "weights": "the generating weights (--lora, --fp8-base)",
              "round": "the round", "version": "the realdpo version that made them"}


def option_differences(mine: dict, other: dict) -> list[str]:
    """What set another recipe's negatives apart from `mine` (two `NegativeRecipe.settings()`), as options:
    e.g. ["--neg-steps 50 (this run: 2)"]."""
    def value(settings: dict, key: str):
        return settings.get(key, "raw" if key == "latents" else None)  # raw recipes do not name it

    def shown(v) -> str:
        return json.dumps(v) if isinstance(v, str) else str(v)

    return [f"{_OPTION_OF.get(key, key)} {shown(value(other, key))} (this run: {shown(value(mine, key))})"
            for key in sorted(set(mine) | set(other)) if key != "source" and value(mine, key) != value(other, key)]


def generation_defaults(opts: NegativeOptions, spec) -> tuple[float, str]:
    """(--neg-guidance, --neg-prompt), an unset one taken from the model where its spec has defaults
    (`run_defaults`), else 6.0 and no negative prompt."""
    run_defaults = getattr(spec, "run_defaults", None)
    if run_defaults is not None:
        run = run_defaults(None, opts.neg_guidance, opts.neg_prompt)
        return float(run.guidance), run.negative_prompt or ""
    return float(opts.neg_guidance if opts.neg_guidance is not None else 6.0), opts.neg_prompt or ""


def lora_weights_id(lora: Path) -> str:
    """`lora:<hash>` of a LoRA folder's files (contents, not paths), the weights id of negatives it generates."""
    h = hashlib.sha256()
    lora = Path(lora)
    files = sorted(p for p in lora.rglob("*") if p.is_file()) if lora.is_dir() else [lora]
    for p in files:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return f"lora:{h.hexdigest()[:16]}"
