"""The DPO reference model (docs/method.md): LoRA adapters disabled, an fp32 EMA of the LoRA update, or a frozen copy.

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

    def metrics(self) -> dict[str, float]:
        """Diagnostics logged after an update."""
        return {}

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


@torch.no_grad()
def low_rank_sum(terms: list[tuple[torch.Tensor, torch.Tensor, float]], rank: int
                 ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """B [out, rank], A [rank, in] with B @ A the best rank-`rank` approximation of sum_i c_i * B_i @ A_i (terms
    (B_i, A_i, c_i)), and the Frobenius norm of what that approximation leaves out (0 when the sum has rank <= rank).
    Computed in float64 from QR factors of the stacked factors, never forming the [out, in] product."""
    P = torch.cat([c * b.double() for b, _, c in terms], dim=1)  # [out, m]
    Q = torch.cat([a.double() for _, a, _ in terms], dim=0)  # [m, in]
    qp, rp = torch.linalg.qr(P)
    qq, rq = torch.linalg.qr(Q.T)
    u, sv, vh = torch.linalg.svd(rp @ rq.T)
    k = min(rank, sv.numel())
    root = sv[:k].sqrt()
    b = torch.zeros(P.shape[0], rank, dtype=torch.float64, device=P.device)
    a = torch.zeros(rank, Q.shape[1], dtype=torch.float64, device=P.device)
    b[:, :k] = (qp @ u[:, :k]) * root
    a[:k] = root[:, None] * (vh[:k] @ qq.T)
    return b, a, float(sv[k:].pow(2).sum().sqrt())


class EmaAdapterReference(Reference):
    """A second LoRA adapter holding the EMA of the trained adapter's weight update dW = s * B @ A, in fp32.

    It averages the product, not the factors: EMA(B) @ EMA(A) is not EMA(B @ A) (the cross terms of how B and A
    moved are lost). Each update forms w * dW_ema + (1 - w) * dW exactly in factored form (rank <= rank + r) and keeps
    its best rank-`rank` approximation (default 2r). While the EMA's rank stays within `rank` this is exact; beyond,
    the dropped part's Frobenius norm is added to a per-layer bound on the distance to the exact EMA,
    bound <- w * bound + dropped, reported relative to |dW_ema| by `metrics()` (ema_error_bound).
    """

    kind = "ema"

    def __init__(self, transformer: torch.nn.Module, rate: float, every: int, adapter: str = POLICY_ADAPTER,
                 rank: int | None = None):
        from peft.tuners.lora import LoraLayer

        self.rate, self.every = rate, every
        self.transformer, self.adapter = transformer, adapter
        config = copy.deepcopy(transformer.peft_config[adapter])
        self.rank = rank or 2 * config.r
        config.r = config.lora_alpha = self.rank  # scaling 1: the EMA adapter's B @ A is dW_ema itself
        config.use_rslora, config.rank_pattern, config.alpha_pattern = False, {}, {}
        with warnings.catch_warnings():  # peft warns that a second adapter is being added: that is the point
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            transformer.add_adapter(config, adapter_name=EMA_ADAPTER)
        transformer.set_adapter(adapter)  # add_adapter activated the new one
        self.layers = {name: m for name, m in transformer.named_modules()
                       if isinstance(m, LoraLayer) and adapter in m.lora_A and EMA_ADAPTER in m.lora_A}
        for m in self.layers.values():
            for p in (m.lora_A[EMA_ADAPTER].weight, m.lora_B[EMA_ADAPTER].weight):
                p.data = p.data.to(torch.float32)
                p.requires_grad_(False)
        self.bound = torch.zeros(len(self.layers), dtype=torch.float64)
        self._average(0.0)  # starts equal to the policy

    def _factors(self, m, name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        return m.lora_B[name].weight, m.lora_A[name].weight, float(m.scaling[name])

    @torch.no_grad()
    def _average(self, rate: float) -> None:
        """dW_ema <- rate * dW_ema + (1 - rate) * dW, for every layer."""
        for i, m in enumerate(self.layers.values()):
            b_e, a_e, s_e = self._factors(m, EMA_ADAPTER)
            b, a, s = self._factors(m, self.adapter)
            terms = [(b_e, a_e, rate), (b, a, (1.0 - rate) * s / s_e)] if rate else [(b, a, s / s_e)]
            new_b, new_a, dropped = low_rank_sum(terms, self.rank)
            b_e.copy_(new_b)
            a_e.copy_(new_a)
            self.bound[i] = rate * self.bound[i] + dropped * s_e

    def update(self, step: int) -> bool:
        if step % self.every:
            return False
        self._average(self.rate)
        return True

    @torch.no_grad()
    def delta(self, name: str) -> torch.Tensor:
        """dW_ema of LoRA layer `name` (float64 [out, in])."""
        b, a, s = self._factors(self.layers[name], EMA_ADAPTER)
        return s * b.double() @ a.double()

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        norms = torch.stack([self.delta(n).norm() for n in self.layers]) if self.layers else torch.zeros(0)
        rel = self.bound / norms.clamp_min(1e-30)
        return {"ema_error_bound": float(rel.max()) if rel.numel() else 0.0}

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in adapter_params(
            self.transformer, EMA_ADAPTER).items()}
        state["ema_error_bound"] = self.bound.clone()
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        params = adapter_params(self.transformer, EMA_ADAPTER)
        state = dict(state)
        bound = state.pop("ema_error_bound", None)
        if set(state) != set(params) or bound is None or bound.shape != self.bound.shape:
            raise ValueError("EMA reference checkpoint does not match the model's LoRA layers")
        for k, v in state.items():
            params[k].copy_(v)
        self.bound.copy_(bound)

    @contextlib.contextmanager
    def active(self):
        with adapter_active(self.transformer, EMA_ADAPTER, restore=self.adapter):
            yield self.transformer


AUTOCAST_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


class _PolicyDtype(torch.nn.Module):
    """A module as the specs see it, but reporting the policy's dtype, so its inputs are cast as the policy's are
    (fp32-computing layers, such as Wan's FP32LayerNorm, return their input's dtype)."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self._dtype = model, dtype

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


class FrozenCopyReference(_Ema):
    """A separate frozen copy of the transformer (full fine-tuning); EMA-updated in fp32 when `rate` is given.

    Without EMA, `autocast_dtype` (the run's mixed precision) stores the weights of linear and convolution layers
    in that dtype, which is what autocast computes them in anyway, and keeps everything else (norms, modulation
    tables, Wan's fp32 modules) in the policy's dtype: under the same autocast the copy computes exactly what the
    policy computes at step 0, at about half the memory of a full-precision copy. Casting the whole copy instead
    changes the norms and modulation, and the reference no longer equals the policy before any update.
    """

    kind = "copy"

    def __init__(self, transformer: torch.nn.Module, rate: float | None = None, every: int = 1,
                 autocast_dtype: torch.dtype | None = None):
        super().__init__(rate, every)
        self.model = copy.deepcopy(transformer).eval().requires_grad_(False)
        if rate is not None:
            self.model.to(torch.float32)
        elif autocast_dtype is not None and autocast_dtype != torch.float32:
            for module in self.model.modules():
                if isinstance(module, AUTOCAST_LAYERS):
                    module.to(autocast_dtype)
        self._ref = dict(self.model.named_parameters())
        self._src = dict(transformer.named_parameters())
        self._as_policy = _PolicyDtype(self.model, next(transformer.parameters()).dtype)

    def active(self):
        return contextlib.nullcontext(self._as_policy)

    def rebind(self, model: torch.nn.Module, transformer: torch.nn.Module) -> None:
        """Use `model` (this copy, wrapped, e.g. sharded by FSDP) as the reference, and `transformer`'s current
        parameters as the EMA's source."""
        self.model = model
        self._ref = dict(model.named_parameters())
        self._src = dict(transformer.named_parameters())


def make_reference(transformer: torch.nn.Module, *, ref: str, lora: bool, ema_rate: float, ema_every: int,
                   autocast_dtype: torch.dtype | None = None, ema_rank: int | None = None) -> Reference:
    """The reference for a run: `ref` is "base" or "ema"; `lora` says whether the transformer carries the trained adapter."""
    if lora:
        if ref == "ema":
            return EmaAdapterReference(transformer, ema_rate, ema_every, rank=ema_rank)
        return DisabledAdapterReference(transformer)
    return FrozenCopyReference(transformer, ema_rate if ref == "ema" else None, ema_every, autocast_dtype=autocast_dtype)
