"""Classifier-free guidance in one batched transformer call, for pipelines that make two (the diffusers Wan ones).

A Wan pipeline's step calls its transformer twice on the same latents and timestep: with the prompt, then with the
negative prompt. `batched_guidance(pipe, negative_prompt_embeds)` swaps the pipeline's transformer(s) for a proxy
whose first call runs both rows in one batch (prompt rows, then negative rows) and returns the prompt half; the
second call, if it carries the same latents, timestep and negative embeddings, gets the stored negative half
without running the model. Any other call runs the transformer as usual, so a pipeline that calls differently
stays correct, only unbatched. The outputs equal the two-call ones up to the rounding of a larger matmul batch.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch


class _BatchedGuidanceProxy:
    """Stands in for a transformer inside one pipeline call (attribute access goes to the transformer)."""

    def __init__(self, transformer: torch.nn.Module, negative: torch.Tensor):
        self._inner = transformer
        self._negative = negative
        self._stored: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # latents, timestep, uncond
        self.batched_calls = 0

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self._inner, name)

    def _negative_for(self, prompt: torch.Tensor) -> torch.Tensor | None:
        neg = self._negative.to(prompt.device, prompt.dtype)
        if neg.shape[0] == 1:
            neg = neg.expand(prompt.shape[0], *neg.shape[1:])
        return neg if neg.shape == prompt.shape else None

    def __call__(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 *args, return_dict: bool = True, **kwargs):
        stored, self._stored = self._stored, None
        if stored is not None and hidden_states is stored[0] and timestep is stored[1] and not args:
            neg = self._negative_for(encoder_hidden_states)
            if neg is not None and torch.equal(encoder_hidden_states, neg):  # the pipeline's unconditional call
                return self._wrap(stored[2], return_dict)
        neg = self._negative_for(encoder_hidden_states)
        if neg is None or args:
            return self._inner(hidden_states, timestep, encoder_hidden_states, *args, return_dict=return_dict,
                               **kwargs) if args else \
                self._inner(hidden_states=hidden_states, timestep=timestep, encoder_hidden_states=encoder_hidden_states,
                            return_dict=return_dict, **kwargs)
        n = hidden_states.shape[0]
        both = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) and v.shape[:1] == (n,) else v
                for k, v in kwargs.items()}  # e.g. Wan 2.1 I2V's image embeddings: the same for both halves
        out = self._inner(hidden_states=torch.cat([hidden_states, hidden_states]),
                          timestep=torch.cat([timestep, timestep]),
                          encoder_hidden_states=torch.cat([encoder_hidden_states, neg]), return_dict=False, **both)[0]
        self.batched_calls += 1
        self._stored = (hidden_states, timestep, out[n:])
        return self._wrap(out[:n], return_dict)

    @staticmethod
    def _wrap(sample: torch.Tensor, return_dict: bool):
        if return_dict:
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=sample)
        return (sample,)


@contextlib.contextmanager
def batched_guidance(pipe, negative_prompt_embeds: torch.Tensor,
                     names: tuple[str, ...] = ("transformer", "transformer_2")) -> Iterator[list[_BatchedGuidanceProxy]]:
    """Within the block, `pipe`'s transformers (each of `names` it has) run guidance batched; restored after.

    negative_prompt_embeds: [1 or B, L, D], exactly what the pipeline is given as `negative_prompt_embeds`."""
    swapped = {}
    for name in names:
        module = getattr(pipe, name, None)
        if module is not None:
            swapped[name] = module
            # object.__setattr__: DiffusionPipeline's own setattr would rewrite its config for the proxy's class
            object.__setattr__(pipe, name, _BatchedGuidanceProxy(module, negative_prompt_embeds))
    try:
        yield [getattr(pipe, n) for n in swapped]
    finally:
        for name, module in swapped.items():
            object.__setattr__(pipe, name, module)
