"""Group offloading (`--group-offload` of `realdpo sample` / `realdpo negatives`): its cost, measured and predicted.

Measured here, on the CPU: generation with the transformer's blocks behind diffusers' group-offloading hooks against
the same generation without them, alternating in this process, on the built-in tiny model. A CPU has nowhere to
offload to, so this is the hooks' own overhead only.

Predicted for a GPU: offloading copies the whole transformer host-to-device once per transformer call, i.e. once per
sampler step for CogVideoX (its pipelines batch the guidance pair) and twice for Wan (conditional and unconditional
calls), at --bandwidth GB/s (pinned memory over PCIe 4.0 x16: ~25). On CUDA the copy of the next block runs on a
side stream during the current block's compute, so it costs time only where copying a block takes longer than
computing it. The last line is `hook_overhead=<x>` (offloaded / plain time on the CPU).

    python bench/group_offload.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# transformer calls per sampler step with guidance, and bf16 transformer bytes (bench/memory.py section 1)
REAL = {"CogVideoX-5B-I2V": (1, "CogVideoX-5B-I2V"), "Wan2.2-TI2V-5B": (2, "Wan2.2-TI2V-5B"),
        "Wan2.1-T2V-14B": (2, "Wan2.1-T2V-14B"), "Wan2.2-I2V-A14B, one expert": (2, "Wan2.2-I2V-A14B, one expert")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="Sampler steps per generation.")
    ap.add_argument("--repeat", type=int, default=5, help="Timed generations per side.")
    ap.add_argument("--bandwidth", type=float, default=25.0, help="Host-to-device GB/s for the GPU prediction.")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import memory

    from realdpo.models import load_spec
    from realdpo.models.placement import enable_group_offload
    from realdpo.models.tiny import builtin_model_path

    path = builtin_model_path()
    plain, offloaded = load_spec(path), load_spec(path)
    enable_group_offload(offloaded.transformer, "cpu")  # what place_pipeline does on an accelerator
    frames, height, width = plain.default_size()
    cond = plain.encode_prompts(["a person walking"])
    kw = dict(num_frames=frames, height=height, width=width, steps=args.steps, guidance=6.0, seeds=[0])
    times = {"plain": [], "offloaded": []}
    for i in range(args.repeat + 1):
        for name, spec in (("plain", plain), ("offloaded", offloaded)):
            t0 = time.perf_counter()
            out = spec.generate_latents(["a person walking"], cond, **kw)
            if i:
                times[name].append(time.perf_counter() - t0)
            if name == "plain":
                want = out
            else:
                assert torch.equal(out, want), "group offloading changed the result"
    t_plain, t_off = statistics.median(times["plain"]), statistics.median(times["offloaded"])
    print(f"CPU, tiny model, {args.steps} steps: plain {t_plain:.3f}s, group-offloaded {t_off:.3f}s (same latents)")
    print(f"\npredicted host-to-device copy per sampler step at {args.bandwidth:g} GB/s (hidden where block compute "
          "is longer than block copy):")
    for name, (calls, key) in REAL.items():
        nbytes = memory.component_bytes(memory.MODELS[key])["transformer"]
        print(f"  {name:30s} {nbytes / 2**30:5.1f} GiB x {calls} call(s): {calls * nbytes / args.bandwidth / 1e9:.2f} s")
    print(f"hook_overhead={t_off / t_plain:.3f}")


if __name__ == "__main__":
    main()
