"""Wan 2.2 A14B's two experts as one module, so the trainer, the references and the DPO step treat them as one model.

The pipeline runs `transformer` at timesteps t >= boundary_ratio * num_train_timesteps (high noise) and
`transformer_2` below (low noise). `ExpertPair` does the same per sample: each row of a batch goes to the expert its
timestep belongs to. LoRA adapters are added to the experts that train (`trained`), one adapter per expert; enabling,
disabling and switching adapters reaches the experts that carry them.
"""

from __future__ import annotations

import copy

import torch

NAMES = {"high": "transformer", "low": "transformer_2"}  # expert -> the pipeline component holding it


class ExpertPair(torch.nn.Module):
    def __init__(self, high: torch.nn.Module, low: torch.nn.Module, boundary_timestep: float):
        super().__init__()
        self.high, self.low = high, low
        self.boundary_timestep = float(boundary_timestep)
        self.trained: tuple[str, ...] = ("high", "low")

    # what the specs read from a transformer
    @property
    def config(self):
        return self.high.config

    @property
    def dtype(self) -> torch.dtype:
        return self.high.dtype

    def experts(self, trained_only: bool = False) -> dict[str, torch.nn.Module]:
        pair = {"high": self.high, "low": self.low}
        return {k: v for k, v in pair.items() if k in self.trained} if trained_only else pair

    def is_high(self, timestep: torch.Tensor) -> torch.Tensor:
        """Per sample: whether its timestep ([B], or [B, tokens] with expanded timesteps) is a high-noise one."""
        t = timestep if timestep.dim() == 1 else timestep.amax(dim=1)
        return t >= self.boundary_timestep

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                return_dict: bool = False, **kwargs):
        high = self.is_high(timestep)
        if bool(high.all()) or not bool(high.any()):
            expert = self.high if bool(high.all()) else self.low
            return expert(hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                          return_dict=False, **kwargs)
        parts, order = [], []
        for mask, expert in ((high, self.high), (~high, self.low)):
            rows = mask.nonzero().flatten()
            parts.append(expert(hidden_states=hidden_states[rows], timestep=timestep[rows],
                                encoder_hidden_states=encoder_hidden_states[rows], return_dict=False,
                                **{k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})[0])
            order.append(rows)
        return (torch.cat(parts)[torch.argsort(torch.cat(order))],)

    # LoRA adapters: added to the trained experts; switched on the experts that carry them (a loaded LoRA may be
    # on one expert only)
    def adapted(self, adapter_name: str | None = None) -> list[torch.nn.Module]:
        return [m for m in self.experts().values() if getattr(m, "_hf_peft_config_loaded", False)
                and (adapter_name is None or adapter_name in m.peft_config)]

    def add_adapter(self, adapter_config, adapter_name: str = "default") -> None:
        for expert in self.experts(trained_only=True).values():
            expert.add_adapter(copy.deepcopy(adapter_config), adapter_name=adapter_name)

    @property
    def peft_config(self):
        return self.adapted()[0].peft_config

    def set_adapter(self, name) -> None:
        for expert in self.adapted(name):
            expert.set_adapter(name)

    def disable_adapters(self) -> None:
        for expert in self.adapted():
            expert.disable_adapters()

    def enable_adapters(self) -> None:
        for expert in self.adapted():
            expert.enable_adapters()

    def enable_gradient_checkpointing(self) -> None:
        for expert in self.experts().values():
            expert.enable_gradient_checkpointing()

    def requires_grad_(self, requires_grad: bool = True):
        for name, expert in self.experts().items():
            expert.requires_grad_(requires_grad and name in self.trained)
        return self
