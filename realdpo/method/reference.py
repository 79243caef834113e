"""The DPO reference model (DESIGN §1): LoRA adapters disabled, an fp32 EMA adapter, or a frozen full copy.

Every reference offers the same things: `errors(spec, latents, noise, timesteps, cond)` (per-sample errors
under `torch.no_grad()`; `errors_chunked` for several chunks at once, switching adapters once), `update(step)` after
each optimizer step (the EMA, a no-op otherwise), and `state_dict()` / `load_state_dict()` for checkpoints (empty
unless it holds weights of its own).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from typing import Iterable, Iterator

import torch

from realdpo.models.base import Cond, ModelSpec
from realdpo.runtime import copy_into

POLICY_ADAPTER = "default"
EMA_ADAPTER = "ema"


@contextlib.contextmanager
def adapters_disabled(transformer: torch.nn.Module) -> Iterator[None]:
    """Run the base weights: the LoRA adapters contribute nothing inside the block."""
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()  # peft also restores requires_grad of the active adapter here


@contextlib.contextmanager
def adapter_active(transformer: torch.nn.Module, name: str, restore: str = POLICY_ADAPTER) -> Iterator[None]:
    transformer.set_adapter(name)
    try:
        yield
    finally:
        transformer.set_adapter(restore)  # also makes only `restore` trainable again


@torch.no_grad()
def ema_update_(ref: list[torch.Tensor], src: list[torch.Tensor], rate: float) -> None:
    """ref <- rate * ref + (1 - rate) * src, in ref's dtype (keep ref in fp32: in bf16 a 0.999 EMA rounds to a no-op)."""
    for r, s in zip(ref, src, strict=True):
        r.lerp_(s.to(device=r.device, dtype=r.dtype), 1.0 - rate)


def adapter_params(transformer: torch.nn.Module, name: str) -> dict[str, torch.nn.Parameter]:
    """The parameters of LoRA adapter `name`, keyed by their name with the adapter's segment removed."""
    tag = f".{name}."
    return {k.replace(tag, "."): p for k, p in transformer.named_parameters() if tag in k}


class Reference:
    """Base class: the interface the trainer and the benchmark use."""

    kind = "reference"

    def errors(self, spec: ModelSpec, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
               cond: Cond) -> torch.Tensor:
        return self.errors_chunked(spec, [(latents, noise, timesteps, cond)])

    @torch.no_grad()
    def errors_chunked(self, spec: ModelSpec,
                       chunks: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor, Cond]]) -> torch.Tensor:
        """`errors` of each (latents, noise, timesteps, cond) chunk, concatenated; the reference is switched in once
        for all chunks (toggling peft adapters walks every module)."""
        with self.active() as model:
            return torch.cat([spec.per_sample_error(model, *c) for c in chunks])

    def active(self) -> contextlib.AbstractContextManager[torch.nn.Module]:
        """Context in which the returned module computes the reference's predictions."""
        raise NotImplementedError

    def update(self, step: int) -> bool:
        """Called after optimizer step `step` (1-based); returns whether the reference changed."""
        return False

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ValueError(f"{self.kind} reference holds no state, got {len(state)} tensors")


class DisabledAdapterReference(Reference):
    """The same transformer with its LoRA adapters switched off: the base model, with no second copy of the weights."""

    kind = "base"

    def __init__(self, transformer: torch.nn.Module):
        self.transformer = transformer

    @contextlib.contextmanager
    def active(self):
        with adapters_disabled(self.transformer):
            yield self.transformer


class _Ema(Reference):
    """Shared EMA bookkeeping: `self._ref` and `self._src` are aligned lists of reference and policy tensors."""

    _ref: dict[str, torch.Tensor]
    _src: dict[str, torch.Tensor]

    def __init__(self, rate: float | None, every: int):
        self.rate, self.every = rate, every

    def update(self, step: int) -> bool:
        if self.rate is None or step % self.every:
            return False
        keys = list(self._ref)
        ema_update_([self._ref[k] for k in keys], [self._src[k] for k in keys], self.rate)
        return True

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.rate is None:
            return {}
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self._ref.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.rate is None:
            return super().load_state_dict(state)
        if set(state) != set(self._ref):
            raise ValueError("EMA reference checkpoint does not match the model's parameters")
        for k, v in state.items():
            copy_into(self._ref[k], v)


class EmaAdapterReference(_Ema):
    """A second LoRA adapter whose weights are an fp32 EMA of the trained adapter (starts equal to it)."""

    kind = "ema"

    def __init__(self, transformer: torch.nn.Module, rate: float, every: int, adapter: str = POLICY_ADAPTER):
        super().__init__(rate, every)
        self.transformer, self.adapter = transformer, adapter
        with warnings.catch_warnings():  # peft warns that a second adapter is being added: that is the point
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            transformer.add_adapter(copy.deepcopy(transformer.peft_config[adapter]), adapter_name=EMA_ADAPTER)
        transformer.set_adapter(adapter)  # add_adapter activated the new one
        self._src = adapter_params(transformer, adapter)
        self._ref = adapter_params(transformer, EMA_ADAPTER)
        with torch.no_grad():
            for k, p in self._ref.items():
                p.data = self._src[k].detach().to(torch.float32, copy=True)
                p.requires_grad_(False)

    @contextlib.contextmanager
    def active(self):
        with adapter_active(self.transformer, EMA_ADAPTER, restore=self.adapter):
            yield self.transformer


class FrozenCopyReference(_Ema):
    """A separate frozen copy of the transformer (full fine-tuning); EMA-updated in fp32 when `rate` is given."""

    kind = "copy"

    def __init__(self, transformer: torch.nn.Module, rate: float | None = None, every: int = 1,
                 dtype: torch.dtype | None = None):
        super().__init__(rate, every)
        self.model = copy.deepcopy(transformer).eval().requires_grad_(False)
        if rate is not None:
            self.model.to(torch.float32)
        elif dtype is not None:
            self.model.to(dtype)
        self._ref = dict(self.model.named_parameters())
        self._src = dict(transformer.named_parameters())

    def active(self):
        return contextlib.nullcontext(self.model)

    def rebind(self, model: torch.nn.Module, transformer: torch.nn.Module) -> None:
        """Use `model` (this copy, wrapped, e.g. sharded by FSDP) as the reference, and `transformer`'s current
        parameters as the EMA's source."""
        self.model = model
        self._ref = dict(model.named_parameters())
        self._src = dict(transformer.named_parameters())


def make_reference(transformer: torch.nn.Module, *, ref: str, lora: bool, ema_rate: float, ema_every: int,
                   copy_dtype: torch.dtype | None = None) -> Reference:
    """The reference for a run: `ref` is "base" or "ema"; `lora` says whether the transformer carries the trained adapter."""
    if lora:
        if ref == "ema":
            return EmaAdapterReference(transformer, ema_rate, ema_every)
        return DisabledAdapterReference(transformer)
    return FrozenCopyReference(transformer, ema_rate if ref == "ema" else None, ema_every, dtype=copy_dtype)
