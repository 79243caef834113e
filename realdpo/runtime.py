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
