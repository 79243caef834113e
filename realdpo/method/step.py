"""One RealDPO micro-batch, computed once and batched (docs/memory.md, "Streamed chunks").

The policy runs once on the concatenation `[x_w (B), x_l (B*K, sample-major)]` with gradients and the reference
once under `no_grad`; all B*(K+1) inputs of a sample share its timestep and its noise tensor. With `chunk_size`
the concatenation is split without changing the math, in one of two ways:

- streamed (the default): each chunk's graph is freed by its own backward before the next chunk runs, so the
  activations held at any moment are one chunk's (with gradient checkpointing: one chunk's checkpoints plus one
  block's recomputed activations). This works because every objective is a mean over (clip, negative) pairs of a
  function of that pair's margin, plus an SFT term in the winner's error: the loss coefficient `dloss/dE` of a loser
  row depends only on its own error and its clip's winner error, and a winner's on its clip's errors. So a no-grad
  pass over the B winners comes first (K+1 rows cost one extra winner pass, not K+1 extra passes), then each loser
  chunk runs forward and backpropagates `coef * E` at once, and the winners run last, when all their coefficients
  are known.
  Given the trainable parameters (`loser_grads`, one process) and chunks of one row, the winner pass is not run
  twice: per clip, each loser row runs forward and backward with coefficient 1 and its gradient is set aside
  (K copies of the trainable parameters' gradients: small for LoRA); then the clip's winner runs forward, which
  makes every coefficient of the clip known, the set-aside gradients are added with their coefficients, and the
  winner backpropagates its own. The same gradient, from (K+1) rows of passes instead of K+2.
- keep_graph: every chunk's forward keeps its graph and one backward follows. No extra pass, but all B*(K+1) rows
  are alive until that backward: with gradient checkpointing their checkpoints (the inputs of every block, of every
  row), without it every activation of every row.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import torch

from realdpo.method.losses import objective_terms, stats_means, step_stats
from realdpo.method.reference import Reference
from realdpo.models.base import Cond, ModelSpec


class ErrorModel(torch.nn.Module):
    """`spec.per_sample_error` of the transformer as a module, so accelerate/DDP can wrap the policy while the spec
    still calls the plain transformer."""

    def __init__(self, spec: ModelSpec, transformer: torch.nn.Module):
        super().__init__()
        self.spec = spec
        self.transformer = transformer

    def forward(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self.spec.per_sample_error(self.transformer, latents, noise, timesteps, cond)


@dataclass
class StepInputs:
    """Model inputs of one micro-batch: rows `[x_w (B), x_l (B*K, sample-major)]`; `batch_size` counts real clips.

    Noise, timesteps and conditioning are stored once per clip and handed to each row of that clip as a view (no
    K+1 copies of the prompt embeddings or the noise); latents stay the caller's tensors (no concatenated copy).
    """

    winners: torch.Tensor
    losers: torch.Tensor | None
    noise: torch.Tensor
    timesteps: torch.Tensor
    cond: Cond
    batch_size: int

    def __len__(self) -> int:
        return self.batch_size * (1 + (0 if self.losers is None else self.losers.shape[1]))

    def clip_of(self, row: int) -> int:
        return row if row < self.batch_size else (row - self.batch_size) // self.losers.shape[1]

    def take(self, sl: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Cond]:
        start, stop, _ = sl.indices(len(self))
        b = self.batch_size
        parts = [self.winners[start:min(stop, b)]] if start < b else []
        if stop > b:
            parts.append(self.losers.flatten(0, 1)[max(start, b) - b:stop - b])
        latents = parts[0] if len(parts) == 1 else torch.cat(parts)
        clips = [self.clip_of(r) for r in range(start, stop)]
        if len(set(clips)) == 1:
            index = slice(clips[0], clips[0] + 1)  # one clip: its row, broadcast below
        elif stop <= b:
            index = slice(start, stop)  # winners only: rows are clips
        else:
            index = torch.tensor(clips)

        def per_clip(x: torch.Tensor) -> torch.Tensor:
            rows = x[index.to(x.device) if isinstance(index, torch.Tensor) else index]
            return rows.expand(len(clips), *x.shape[1:])

        return latents, per_clip(self.noise), per_clip(self.timesteps), {k: per_clip(v) for k, v in self.cond.items()}


def build_inputs(winners: torch.Tensor, losers: torch.Tensor | None, cond: Cond, noise: torch.Tensor,
                 timesteps: torch.Tensor) -> StepInputs:
    """winners [B, *L], losers [B, K, *L] (None: winners only, for SFT), cond/noise/timesteps batched per clip."""
    return StepInputs(winners=winners, losers=losers, noise=noise, timesteps=timesteps, cond=dict(cond),
                      batch_size=winners.shape[0])


def draw_noise(spec: ModelSpec, winners: torch.Tensor, t_min: float, t_max: float,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One timestep and one noise tensor per real clip (shared with its losers); drawn on the CPU generator so a
    step's randomness depends only on the generator's seed."""
    timesteps = spec.sample_timesteps(winners.shape[0], t_min, t_max, generator=generator)
    noise = torch.randn(spec.noise_shape(tuple(winners.shape)), generator=generator, dtype=torch.float32)
    noise = noise.to(winners.device)
    return noise, timesteps.to(winners.device)


def _slices(n: int, size: int | None) -> list[slice]:
    if n == 0:
        return []
    size = n if not size or size >= n else size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def preference_step(policy: Callable[..., torch.Tensor], reference: Reference | None, spec: ModelSpec,
                    inputs: StepInputs, *, kind: str, beta: float, sft_weight: float = 1.0,
                    chunk_size: int | None = None, keep_graph: bool = False,
                    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
                    no_sync: Callable[[], ContextManager] = contextlib.nullcontext,
                    groups: dict[str, torch.Tensor] | None = None, raw_stats: bool = False,
                    loser_grads: Sequence[torch.nn.Parameter] | None = None):
    """Forward, loss and backward of one micro-batch; returns the metrics (floats, one host sync), or with
    `raw_stats` their (sum, count) tensors (`realdpo.method.losses.step_stats`, no host sync).

    policy(latents, noise, timesteps, cond) -> E [n] with gradients (an `ErrorModel`, possibly DDP-wrapped).
    keep_graph: chunk by keeping every chunk's graph until one backward, instead of streaming the chunks.
    backward: e.g. `accelerator.backward`. no_sync: suppresses gradient all-reduce for all but the last backward.
    groups: name -> bool [B] clips, for metrics per group (timestep buckets, experts).
    loser_grads: the trainable parameters, in a single process: streamed chunks of one row then set each loser
    row's gradient aside instead of running a no-grad winner pass (module docstring). Their `.grad` is swapped
    while a loser row backpropagates, which a DDP or FSDP wrapper's reduction would not see.
    """
    slices = _slices(len(inputs), chunk_size)
    err_ref = None
    if kind != "sft":
        err_ref = reference.errors_chunked(spec, (inputs.take(sl) for sl in slices))
    if len(slices) == 1 or keep_graph:
        err = torch.cat([policy(*inputs.take(sl)) for sl in slices])
        backward(objective_terms(kind, err, err_ref, inputs.batch_size, beta=beta, sft_weight=sft_weight)["loss"])
    elif loser_grads is not None and chunk_size == 1 and inputs.losers is not None:
        err = _streamed_with_loser_grads(policy, inputs, err_ref, list(loser_grads), kind=kind, beta=beta,
                                         sft_weight=sft_weight, backward=backward, no_sync=no_sync)
    else:
        err = _streamed(policy, inputs, err_ref, chunk_size, kind=kind, beta=beta, sft_weight=sft_weight,
                        backward=backward, no_sync=no_sync)
    stats = step_stats(kind, err.detach(), err_ref, inputs.batch_size, beta=beta, sft_weight=sft_weight, groups=groups)
    return stats if raw_stats else stats_means(stats)


def _streamed(policy, inputs: StepInputs, err_ref: torch.Tensor | None, chunk_size: int, *, kind: str, beta: float,
              sft_weight: float, backward, no_sync) -> torch.Tensor:
    """The streamed chunk order of the module docstring: winners without gradients, then every loser chunk forward
    and backward, then the winners forward and backward. Returns the policy's errors [n] (detached)."""
    b, n = inputs.batch_size, len(inputs)
    winner_slices = _slices(b, chunk_size)
    loser_slices = [slice(sl.start + b, sl.stop + b) for sl in _slices(n - b, chunk_size)]
    known = _placeholder_errors(inputs, err_ref)
    if loser_slices:
        with torch.no_grad():
            for sl in winner_slices:
                known[sl] = policy(*inputs.take(sl)).float()

    order = loser_slices + winner_slices
    for i, sl in enumerate(order):
        with no_sync() if i < len(order) - 1 else contextlib.nullcontext():
            err = policy(*inputs.take(sl))
            known[sl] = err.detach().float()
            coef = _coefficients(known, kind, err_ref, b, beta=beta, sft_weight=sft_weight)[sl]
            backward((coef.to(err.dtype) * err).sum())
            del err
    return known


def _placeholder_errors(inputs: StepInputs, err_ref: torch.Tensor | None) -> torch.Tensor:
    """The policy's errors [n] as the streamed orders fill them in: rows not yet computed hold placeholders (the
    reference's errors, or zeros) that the coefficients of the rows computed so far never depend on."""
    if err_ref is None:
        return torch.zeros(len(inputs), dtype=torch.float32, device=inputs.winners.device)
    return err_ref.detach().float().clone()


def _coefficients(known: torch.Tensor, kind: str, err_ref: torch.Tensor | None, batch_size: int, *, beta: float,
                  sft_weight: float) -> torch.Tensor:
    """dloss/dE [n] at the errors `known` [n]: the factor each row's error is backpropagated with."""
    leaf = known.detach().requires_grad_(True)
    loss = objective_terms(kind, leaf, err_ref, batch_size, beta=beta, sft_weight=sft_weight)["loss"]
    (grad,) = torch.autograd.grad(loss, leaf)
    return grad


def _streamed_with_loser_grads(policy, inputs: StepInputs, err_ref: torch.Tensor | None,
                               params: list[torch.nn.Parameter], *, kind: str, beta: float, sft_weight: float,
                               backward, no_sync) -> torch.Tensor:
    """Streamed chunks of one row, clip by clip, with each loser row's gradient set aside until its clip's winner
    error makes its coefficient known (module docstring). Returns the policy's errors [n] (detached)."""
    b, k = inputs.batch_size, inputs.losers.shape[1]
    known = _placeholder_errors(inputs, err_ref)
    for clip in range(b):
        aside = []
        for row in range(b + clip * k, b + (clip + 1) * k):
            sl = slice(row, row + 1)
            held = [p.grad for p in params]  # earlier rows' and micro-batches' gradients
            for p in params:
                p.grad = None
            with no_sync():
                err = policy(*inputs.take(sl))
                known[sl] = err.detach().float()
                backward(err.sum())
                del err
            aside.append((row, [p.grad for p in params]))
            for p, g in zip(params, held):
                p.grad = g
        sl = slice(clip, clip + 1)
        with no_sync() if clip < b - 1 else contextlib.nullcontext():
            err = policy(*inputs.take(sl))
            known[sl] = err.detach().float()
            coef = _coefficients(known, kind, err_ref, b, beta=beta, sft_weight=sft_weight)
            for row, grads in aside:
                for p, g in zip(params, grads):
                    if g is not None:
                        g.mul_(coef[row].to(g.dtype))
                        p.grad = g if p.grad is None else p.grad.add_(g)
            del aside
            backward((coef[sl].to(err.dtype) * err).sum())
            del err
    return known
