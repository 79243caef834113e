"""A training run's options with every default resolved, built once before training and recorded in
OUT/train_config.json. The user's `TrainConfig` is never written to: the run works on a checked copy."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import torch

from realdpo.configs.train import TrainConfig
from realdpo.models.base import ModelSpec, SpecOptions

BUCKETS = 4  # timestep buckets of the health metrics: equal shares of the trained timesteps, q1 the least noisy


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The options as JSON values (train_config.json's top level, the checkpoints' record of a run)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def checked(cfg: TrainConfig) -> TrainConfig:
    """A checked copy of the user's options with the config's own defaults filled in (--t-min, --t-max); raises
    UserError for a bad option. The user's object stays as given."""
    options = copy.deepcopy(cfg)
    options.validate()
    return options


def spec_options(options: TrainConfig) -> SpecOptions:
    """How the run uses its model, given to `load_spec`."""
    return SpecOptions(image_noise=options.first_frame_noise, train_experts=options.train_experts,
                       expert_default="both" if options.loss == "sft" else "low",
                       expert_ranges=tuple((e, lo, hi) for e, (lo, hi) in options.expert_ranges().items()),
                       t_range=(options.t_min, options.t_max))


@dataclass(frozen=True)
class ResolvedRun:
    """What a run trains with: its options, every default left to the model resolved (`resolve`)."""

    options: TrainConfig  # the checked copy, with the memory defaults resolved; never mutated
    task: str
    frames: int
    height: int
    width: int
    fps: float
    guidance: float  # validation samples' and generated negatives' classifier-free guidance
    negative_prompt: str
    beta: float
    trained_experts: tuple[str, ...]
    bucket_edges: tuple[float, ...]  # the health buckets' BUCKETS - 1 inner edges, in the model's timestep units

    def config_dict(self) -> dict[str, Any]:
        return config_dict(self.options)

    def resolved(self) -> dict[str, Any]:
        """What the options left to the model became (train_config.json's "resolved")."""
        return {"task": self.task, "frames": self.frames, "height": self.height, "width": self.width, "fps": self.fps,
                "neg_guidance": self.guidance, "neg_prompt": self.negative_prompt, "beta": self.beta,
                "trained_experts": list(self.trained_experts),
                "health_bucket_edges": [round(e, 4) for e in self.bucket_edges]}

    def record(self) -> dict[str, Any]:
        """OUT/train_config.json: the options, and what the model resolved."""
        return {**self.config_dict(), "resolved": self.resolved()}


def resolve(options: TrainConfig, spec: ModelSpec) -> ResolvedRun:
    """The run's defaults from its loaded model (`spec`, loaded with `spec_options(options)`)."""
    from realdpo.models.placement import is_real_model

    checkpointing, chunk_size = options.gradient_checkpointing, options.chunk_size
    if is_real_model(spec.transformer):  # defaults that only pay off at real sizes (docs: memory)
        checkpointing = True if checkpointing is None else checkpointing
        chunk_size = chunk_size or 1
    options = dataclasses.replace(options, gradient_checkpointing=bool(checkpointing), chunk_size=chunk_size)
    frames, height, width = spec.resolve_size(options.frames, options.height, options.width)
    run = spec.run_defaults(options.fps, options.neg_guidance, options.neg_prompt, options.beta)
    # the health buckets: quartiles of the timesteps training draws (in the model's units)
    draws = spec.sample_timesteps(4096, options.t_min, options.t_max,
                                  generator=torch.Generator().manual_seed(0)).double()
    edges = torch.quantile(draws, torch.linspace(0, 1, BUCKETS + 1, dtype=torch.double)[1:-1])
    return ResolvedRun(options=options, task=spec.task, frames=frames, height=height, width=width, fps=run.fps,
                       guidance=run.guidance, negative_prompt=run.negative_prompt, beta=run.beta,
                       trained_experts=tuple(spec.trained_experts), bucket_edges=tuple(float(e) for e in edges))
