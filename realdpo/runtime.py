"""Where a command runs: the device to use, and whether several processes must be joined on the CPU."""

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
