"""Training checkpoints: OUT/checkpoints/step-N/, written atomically, read without unpickling.

A checkpoint holds accelerate's state (optimizer, LR scheduler, every process's RNG; accelerate reads them with
`torch.load(weights_only=True)`) plus our own files: `trainable.safetensors` (the trained parameters: the LoRA
adapter, or the whole transformer with --no-lora; under FSDP accelerate's sharded model files hold them
instead), `reference.safetensors` (the EMA reference, when there is one),
`state.json` (optimizer step, data position, round) and `train_config.json` (the options of the run that wrote
it). It is written under a temporary name and renamed into place, so `latest_checkpoint` never sees a torn one; a
checkpoint damaged later is passed over by `restore_latest`, which falls back to the one before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from realbase.errors import UserError, one_line
from realbase.files import replace_dir
from realdpo.runtime import copy_into, full_tensor, is_sharded

STATE_FILE = "state.json"
CONFIG_FILE = "train_config.json"  # in OUT (rewritten by every run) and in each checkpoint (the run that wrote it)
logger = logging.getLogger(__name__)
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


def save_checkpoint(accelerator, out: Path, step: int, *, trainable: dict[str, torch.Tensor],
                    reference: dict[str, torch.Tensor], state: dict[str, Any], keep: int = 0,
                    config: dict[str, Any] | None = None) -> Path:
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
        if config is not None:
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_dir(tmp, final)  # final exists when re-saving the same step (a resumed run that ends where it started)
        if keep > 0:
            for _, p in checkpoint_dirs(out)[:-keep]:
                shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


class CorruptCheckpoint(Exception):
    """A checkpoint whose files cannot be read (truncated, overwritten, half-copied)."""


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors' own error type for a bad header or a short file; OSError
        raise CorruptCheckpoint(f"{path.name}: {one_line(e, 160)}") from None


def _check_shapes(path: Path, saved: dict[str, torch.Tensor], trainable: dict[str, torch.nn.Parameter]) -> None:
    hint = "resume with the options the run was started with (--lora-rank, --lora/--no-lora, --model)"
    if set(saved) != set(trainable):
        raise UserError(f"checkpoint {path} does not hold this run's trainable parameters ({len(saved)} saved, "
                        f"{len(trainable)} here); {hint}")
    for k, p in trainable.items():
        if saved[k].shape != p.shape:
            raise UserError(f"checkpoint {path} does not match this run: {k} is {list(saved[k].shape)} there, "
                            f"{list(p.shape)} here; {hint}")


def load_checkpoint(accelerator, path: Path, *, trainable: dict[str, torch.nn.Parameter],
                    reference) -> dict[str, Any]:
    """Restore accelerate's state, the trained parameters and the reference; returns state.json.

    A file that cannot be read raises CorruptCheckpoint (restore_latest then loads an older checkpoint, which
    overwrites whatever this one had set); one that does not fit this run (another LoRA rank, say) raises UserError
    before the trained parameters are touched."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CorruptCheckpoint(f"{STATE_FILE}: {one_line(e, 160)}") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CorruptCheckpoint(f"{STATE_FILE} holds no step")
    saved = _read_tensors(path / "trainable.safetensors") if trainable else {}
    _check_shapes(path, saved, trainable)
    ref_file = path / "reference.safetensors"
    try:
        reference.load_state_dict(_read_tensors(ref_file) if ref_file.is_file() else {})
    except ValueError as e:  # an EMA reference saved, none here, or the other way round
        raise UserError(f"checkpoint {path} does not match this run's reference ({e}); resume with the options "
                        "the run was started with (--ref, --loss)") from None
    try:
        accelerator.load_state(str(path))
    except Exception as e:  # optimizer/scheduler/RNG files: torch.load(weights_only=True) errors of any kind
        raise CorruptCheckpoint(f"accelerate state: {one_line(e, 160)}") from None
    with torch.no_grad():
        for k, p in trainable.items():
            copy_into(p, saved[k])
    return state


def restore_latest(accelerator, out: Path, *, trainable: dict[str, torch.nn.Parameter], reference,
                   warn: bool = True) -> tuple[Path, dict[str, Any]]:
    """Load the newest readable checkpoint in OUT/checkpoints; an unreadable one is passed over with a warning,
    and UserError says why when none can be read."""
    tried = []
    for _, path in reversed(checkpoint_dirs(out)):
        try:
            return path, load_checkpoint(accelerator, path, trainable=trainable, reference=reference)
        except CorruptCheckpoint as e:
            tried.append(f"{path.name}: {e}")
            if warn:
                logger.warning("checkpoint %s is unreadable (%s); trying the one before it", path, e)
    raise UserError(f"--resume: no readable checkpoint in {Path(out) / 'checkpoints'} "
                    f"({'; '.join(tried) or 'none found'})")


def saved_config(checkpoint: Path, out: Path) -> dict[str, Any] | None:
    """The options of the run that wrote `checkpoint`: its own copy, else OUT/train_config.json (older
    checkpoints carry none), else None. UserError when the only record is unreadable."""
    own = Path(checkpoint) / CONFIG_FILE
    with contextlib.suppress(OSError, ValueError):
        cfg = json.loads(own.read_text(encoding="utf-8"))
        if isinstance(cfg, dict):
            return cfg
    top = Path(out) / CONFIG_FILE
    if not top.is_file():
        return None
    try:
        cfg = json.loads(top.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        cfg = e
    if not isinstance(cfg, dict):
        why = one_line(cfg, 120) if isinstance(cfg, Exception) else f"it holds a {type(cfg).__name__}, not an object"
        raise UserError(f"--resume: cannot read {top}, the record of the run's options ({why}); restore it, or "
                        "delete it to resume without checking that the options match")
    return cfg


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
