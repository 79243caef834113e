"""The optimizer of `realdpo train --optimizer`: torch's AdamW, or bitsandbytes' 8-bit AdamW (state quantised
blockwise to 8 bits: 2 bytes per trained weight instead of AdamW's 8, the difference that matters for --no-lora)."""

from __future__ import annotations

from typing import Iterable

import torch

from realbase.errors import UserError


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], *, lr: float,
                   weight_decay: float) -> torch.optim.Optimizer:
    params = list(params)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise UserError("--optimizer adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    raise UserError(f"unknown --optimizer {name!r}")


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's per-parameter state tensors."""
    return sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values()
               if isinstance(v, torch.Tensor))
