"""Training checkpoints: OUT/checkpoints/step-N/, written atomically, read without unpickling.

A checkpoint holds accelerate's state (optimizer, LR scheduler, every process's RNG; accelerate reads them with
`torch.load(weights_only=True)`) plus our own files: `trainable.safetensors` (the trained parameters: the LoRA
adapter, or the whole transformer with --no-lora; under FSDP accelerate's sharded model files hold them instead),
`reference.safetensors` (the EMA reference, when there is one)
and `state.json` (optimizer step, data position, round). It is written under a temporary name and renamed into
place, so `latest_checkpoint` never sees a torn one.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from realdpo.runtime import copy_into, full_tensor, is_sharded

STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(out: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under OUT/checkpoints, oldest first."""
    root = Path(out) / "checkpoints"
    found = []
    for p in root.iterdir() if root.is_dir() else []:
        m = _STEP_DIR.match(p.name)
        if m and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out: Path) -> Path | None:
    dirs = checkpoint_dirs(out)
    return dirs[-1][1] if dirs else None


def _tensors(named: dict[str, torch.Tensor], keep: bool = True) -> dict[str, torch.Tensor]:
    """CPU copies of whole tensors; FSDP shards are gathered one at a time (every process must call this for
    them) and kept only where `keep`."""
    out = {}
    for k, v in named.items():
        whole = full_tensor(v)
        if keep:
            out[k] = whole.detach().to("cpu").contiguous().clone()
    return out


def replace_dir(tmp: Path, final: Path) -> None:
    """Put the finished folder `tmp` in place of `final`, which may exist."""
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(final)


def save_checkpoint(accelerator, out: Path, step: int, *, trainable: dict[str, torch.Tensor],
                    reference: dict[str, torch.Tensor], state: dict[str, Any], keep: int = 0) -> Path:
    """Collective: every process calls it. Returns OUT/checkpoints/step-<step>."""
    root = Path(out) / "checkpoints"
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))  # each process adds its RNG state; optimizer and scheduler from the main one
    main = accelerator.is_main_process
    whole = {name: _tensors(named, keep=main) for name, named in (("trainable", trainable), ("reference", reference))
             if named and (main or is_sharded(named))}  # shards: every process joins the gathering
    if main:
        for name, tensors in whole.items():
            save_file(tensors, str(tmp / f"{name}.safetensors"))
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_dir(tmp, final)  # final exists when re-saving the same step (a resumed run that ends where it started)
        if keep > 0:
            for _, p in checkpoint_dirs(out)[:-keep]:
                shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, *, trainable: dict[str, torch.nn.Parameter],
                    reference) -> dict[str, Any]:
    """Restore accelerate's state, the trained parameters and the reference; returns state.json."""
    path = Path(path)
    accelerator.load_state(str(path))
    saved = load_file(str(path / "trainable.safetensors")) if trainable else {}
    if set(saved) != set(trainable):
        raise ValueError(f"checkpoint {path} does not match this run's trainable parameters "
                         f"({len(saved)} saved, {len(trainable)} expected)")
    with torch.no_grad():
        for k, p in trainable.items():
            copy_into(p, saved[k])
    ref_file = path / "reference.safetensors"
    reference.load_state_dict(load_file(str(ref_file)) if ref_file.is_file() else {})
    return json.loads((path / STATE_FILE).read_text())


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Drop rows logged after `max_step` (a run killed after its last checkpoint logged steps it will redo)."""
    path = Path(path)
    if not path.is_file():
        return
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    kept = []
    for line in rows:
        try:
            if json.loads(line).get("step", 0) <= max_step:
                kept.append(line)
        except json.JSONDecodeError:  # a line torn by the kill
            pass
    if len(kept) != len(rows):
        path.write_text("".join(line + "\n" for line in kept))
