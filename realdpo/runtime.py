"""Where a command runs: the device to use, whether several processes must be joined on the CPU, and FSDP shards
(DTensors) gathered or filled whole."""

from __future__ import annotations

import os

import torch


def default_device() -> torch.device:
    """The machine's accelerator if it has one, else the CPU."""
    return torch.accelerator.current_accelerator() if torch.accelerator.is_available() else torch.device("cpu")


def cpu_only_distributed() -> bool:
    """Launched as several processes (torchrun, `accelerate launch --multi_gpu`) on a machine without an
    accelerator: accelerate only joins the processes on CPU when told so, else each would work alone."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()


def is_sharded(named: dict[str, torch.Tensor]) -> bool:
    """Whether any tensor is an FSDP shard (a DTensor): gathering it is a collective every process must join."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(v, DTensor) for v in named.values())


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP shard (a collective), or `t` itself."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def copy_into(param: torch.Tensor, value: torch.Tensor) -> None:
    """param.copy_(value) for a whole `value`, also when `param` is an FSDP shard."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        value = distribute_tensor(value.to(param.device, param.dtype), param.device_mesh, param.placements)
    param.copy_(value)


def shard_like(model: torch.nn.Module, sharded: torch.nn.Module, units: list[str]) -> torch.nn.Module:
    """FSDP2-shard `model` (a frozen copy of `sharded`'s module) over the same device mesh and in the same units
    (modules whose class name is in `units`, then the whole), so their shards line up element for element."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    mesh = next(p.device_mesh for p in sharded.parameters() if isinstance(p, DTensor))
    for module in model.modules():
        if module is not model and type(module).__name__ in units:
            fully_shard(module, mesh=mesh)
    # the root too gives its gathered weights back after each forward: it has no backward to do it, and an EMA
    # update writes the shards
    return fully_shard(model, mesh=mesh, reshard_after_forward=True)
class Processes:
    """The processes of one launch, as work sharing needs them: rank, world size, a barrier, gathering and
    broadcasting small Python objects. `state` is accelerate's PartialState or Accelerator (None: this process
    alone)."""

    def __init__(self, state=None):
        self.state = state
        self.rank = int(state.process_index) if state is not None else 0
        self.world = int(state.num_processes) if state is not None else 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

    def gather(self, obj) -> list:
        """Every process's `obj`, in rank order, on every process."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def broadcast(self, obj):
        """The main process's `obj`, on every process."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]


def step_progress(enabled: bool = True):
    """The rich bar of a training loop: each task's description, done/total, elapsed and remaining time, and its
    `info` field (the latest loss, ...). Disabled: nothing is drawn (non-main processes)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=not enabled)
