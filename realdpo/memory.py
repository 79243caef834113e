"""Measuring memory: bytes a module holds per device, and the peak of tensor memory allocated while a function runs.

`peak_allocated` counts tensor allocations, not the process's resident set: on CUDA it is
`torch.cuda.max_memory_allocated` over the call; on the CPU it replays the allocation and free events torch's
profiler records (`profile_memory=True`) in time order. Either way it is the high-water mark of live tensor bytes
allocated during the call, above what was live when it started, so it is exact and does not depend on what other
processes on the machine do.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable

import torch


def resident_bytes(module: torch.nn.Module) -> dict[str, int]:
    """Bytes of a module's parameters and buffers, by device type ("cpu", "cuda", "meta", ...); each storage once."""
    seen: set[tuple[str, int]] = set()
    out: Counter[str] = Counter()
    for t in list(module.parameters()) + list(module.buffers()):
        key = (str(t.device), t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t))
        if key in seen:
            continue
        seen.add(key)
        out[t.device.type] += t.numel() * t.element_size()
    return dict(out)


def peak_allocated(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak bytes of tensors allocated while `fn()` runs, above those live when it starts (see the module doc)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        # allocations are charged to the op that made them (self, so nested ops count once); frees are "[memory]"
        live += e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak
