"""Where a pipeline's components live, and how its frozen weights are stored (issue: fit the GPUs users have).

- `place_pipeline`: the denoiser (transformer) goes to the accelerator; the text encoder, image encoder and VAE stay
  in CPU memory and move to the accelerator only while one of them runs (`OnDemand` hooks, the accelerate hook
  mechanism diffusers' own CPU offload uses, so `vae.encode`/`vae.decode` trigger them too). At most one of them is
  resident at a time, and every denoiser call parks them first: during training steps and sampling steps none of
  them takes accelerator memory, and when the latent cache already holds everything they are never moved at all.
- `enable_fp8_storage`: diffusers' layerwise casting of the frozen base: linear/conv weights stored in float8 (e4m3),
  cast to the compute dtype for each layer's forward; patch/position embeddings, norms and the input/output
  projections stay in the compute dtype, and so do LoRA layers (diffusers skips peft's), trained in fp32.
- `enable_group_offload`: diffusers' block-level group offloading of the transformer, for generating negatives and
  samples on cards the transformer does not fit: weights live in CPU memory and each block is copied in just before
  it runs (overlapped with compute on CUDA streams).

`is_real_model` decides defaults that only pay off at real sizes (gradient checkpointing, chunking).
"""

from __future__ import annotations

import torch
from accelerate.hooks import ModelHook, add_hook_to_module
from accelerate.utils import send_to_device

# Every published CogVideoX/Wan transformer has >= 1.3B parameters; the tiny test and built-in models have < 1M.
REAL_MODEL_PARAMS = 100_000_000


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def is_real_model(transformer: torch.nn.Module) -> bool:
    """Whether a transformer is checkpoint-sized (>= REAL_MODEL_PARAMS parameters), not a tiny test model."""
    return parameter_count(transformer) >= REAL_MODEL_PARAMS


def is_accelerator(device: torch.device | str) -> bool:
    return torch.device(device).type not in ("cpu", "meta")


def _is_denoiser(name: str) -> bool:
    return name.startswith("transformer")  # transformer, and Wan 2.2 A14B's transformer_2


class EncoderGroup:
    """The on-demand components of one pipeline: at most one is on the accelerator at a time."""

    def __init__(self, device: torch.device):
        self.device = device
        self.members: dict[str, tuple[torch.nn.Module, OnDemand]] = {}

    def park(self, keep: str | None = None) -> None:
        """Move every resident member except `keep` back to CPU memory."""
        for name, (module, hook) in self.members.items():
            if name != keep and hook.resident:
                module.to("cpu")
                hook.resident = False

    def onloads(self) -> dict[str, int]:
        """How many times each member was moved to the accelerator."""
        return {name: hook.onloads for name, (_, hook) in self.members.items()}

    def resident(self) -> list[str]:
        return [name for name, (_, hook) in self.members.items() if hook.resident]


class OnDemand(ModelHook):
    """Moves its module to the accelerator when it runs (forward, or a diffusers `encode`/`decode`), parking the
    group's other members first; the module stays there until the group parks it."""

    def __init__(self, group: EncoderGroup, name: str):
        super().__init__()
        self.group, self.name = group, name
        self.execution_device = group.device  # read by DiffusionPipeline._execution_device
        self.resident = False
        self.onloads = 0

    def pre_forward(self, module, *args, **kwargs):
        if not self.resident:
            self.group.park(keep=self.name)
            module.to(self.execution_device)
            self.resident = True
            self.onloads += 1
        return send_to_device(args, self.execution_device), send_to_device(kwargs, self.execution_device)


def place_pipeline(pipe, device: torch.device | str, *, offload_encoders: bool = True,
                   group_offload: bool = False) -> EncoderGroup | None:
    """Put a loaded pipeline's components where training and sampling want them (see the module doc).

    On a CPU (or with offload_encoders=False and no group offload) everything simply goes to `device`. Returns the
    encoder group (None when nothing is on demand)."""
    device = torch.device(device)
    if not is_accelerator(device) or not (offload_encoders or group_offload):
        pipe.to(device)
        return None
    group = EncoderGroup(device)
    for name, module in pipe.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        if _is_denoiser(name):
            if group_offload:
                enable_group_offload(module, device)
            else:
                module.to(device)
            module.register_forward_pre_hook(lambda _m, _args: group.park())
        else:
            module.to("cpu")
            hook = OnDemand(group, name)
            add_hook_to_module(module, hook)
            group.members[name] = (module, hook)
    return group


def enable_fp8_storage(transformer: torch.nn.Module, compute_dtype: torch.dtype) -> None:
    """Store the transformer's frozen linear/conv weights in float8 e4m3, computing in `compute_dtype`. Call before
    adding LoRA adapters (their layers are skipped either way)."""
    transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute_dtype)


def enable_group_offload(transformer: torch.nn.Module, device: torch.device | str) -> None:
    """Block-level group offloading: one transformer block at a time on `device`, the rest in CPU memory; on CUDA
    the next block's copy overlaps the current block's compute."""
    device = torch.device(device)
    transformer.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                     offload_type="block_level", num_blocks_per_group=1,
                                     use_stream=device.type == "cuda")
