"""Measuring memory: bytes a module holds per device, and the peak of tensor memory allocated while a function runs.

`peak_allocated` counts tensor allocations, not the process's resident set: on CUDA it is
`torch.cuda.max_memory_allocated` over the call; on the CPU it replays, in time order, every allocation and free
torch's memory profiler records (the allocator's events, kernel temporaries included). Either way it is the high-water mark of live tensor bytes
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
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:  # every allocation and free, in time order
        if action == Action.CREATE:
            live += size
            peak = max(peak, live)
        elif action == Action.DESTROY:
            live -= size
    return peak


class TensorTracker:
    """Live and peak bytes of every tensor storage created while active (a dispatch mode: each op's new outputs
    are counted when made and uncounted when their storage is freed; views and in-place results are not new).

    It works on the meta device, where nothing is allocated: `bench/memory.py` runs a whole training step of a
    real-size model on meta tensors under it to predict its peak. `.item()` returns 0.5 there (the values are not
    the point). Kernel-internal temporaries are not seen; on real tensors `peak_allocated` sees them too.
    """

    def __init__(self):
        self.live = self.peak = 0
        self._refs: dict[int, object] = {}
        self._mode = None

    def __enter__(self) -> "TensorTracker":
        import weakref

        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
                    return 0.5
                out = func(*args, **(kwargs or {}))
                returns = func._schema.returns
                for i, t in enumerate(out if isinstance(out, (tuple, list)) else (out,)):
                    if not isinstance(t, torch.Tensor) or (i < len(returns) and returns[i].alias_info is not None):
                        continue
                    storage = t.untyped_storage()
                    key = storage._cdata
                    if key not in tracker._refs:
                        size = storage.nbytes()
                        tracker.live += size
                        tracker.peak = max(tracker.peak, tracker.live)
                        tracker._refs[key] = weakref.ref(storage, lambda _, key=key, size=size: tracker._free(key, size))
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def _free(self, key: int, size: int) -> None:
        self.live -= size
        self._refs.pop(key, None)

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)

    def reset_peak(self) -> None:
        self.peak = self.live
