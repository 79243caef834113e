"""Full fine-tuning sharded with FSDP2 (realdpo/configs/fsdp.yaml) on two CPU processes over gloo: the same weights
as plain data-parallel training, and an exact resume from accelerate's sharded checkpoint.

accelerate takes its FSDP branch only on GPUs, so the launches go through tests/fsdp_on_cpu.py, which sets the state
accelerate would set there; everything after that (accelerate's FSDP2 preparation and checkpoints, the trainer) is
the code a GPU run executes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import synthetic_clip, tiny_model, write_tiny_shard

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launch: list[str], args: list[str]) -> None:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--main_process_port", str(_free_port()), *launch, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.slow
def test_fsdp_full_fine_tuning_matches_data_parallel_and_resumes(tmp_path):
    shard = write_tiny_shard(tmp_path / "shards" / "realaction-000000.tar",
                             [(f"synth-{i:04d}", f"a square moving, take {i}", synthetic_clip(frames=20, seed=i))
                              for i in range(4)])
    model = tiny_model("cogvideox", "t2v")
    train = ["train", "--shards", str(shard), "--model", str(model), "--cache-dir",
             str(tmp_path / "latents"), "--steps", "2", "--negatives", "2", "--neg-steps", "2", "--no-lora",
             "--beta", "500", "--lr", "1e-4", "--checkpoint-every", "1", "--ref", "ema", "--ema-every", "1",
             "--ema-rate", "0.5"]  # the EMA reference: a second sharded model, updated and checkpointed
    fsdp = ["--config_file", str(ROOT / "realdpo" / "configs" / "fsdp.yaml"), str(ROOT / "tests" / "fsdp_on_cpu.py")]
    _launch(fsdp, [*train, "--out", str(tmp_path / "fsdp")])
    _launch(["--multi_gpu", "--dynamo_backend", "no", "-m", "cli.main"], [*train, "--out", str(tmp_path / "ddp")])

    sharded, plain = _weights(tmp_path / "fsdp"), _weights(tmp_path / "ddp")
    assert sharded.keys() == plain.keys() and len(sharded) > 10
    # reduce-scatter and all-reduce sum in different orders, so the gradients agree to float rounding; AdamW turns a
    # rounding difference in a near-zero gradient into up to lr per step, so compare to what training moved
    start = load_file(str(model / "transformer" / "diffusion_pytorch_model.safetensors"))
    diff = torch.cat([(sharded[k] - plain[k]).abs().flatten() for k in sharded])
    moved = torch.cat([(plain[k] - start[k].float()).abs().flatten() for k in sharded])
    assert diff.median() < 0.01 * moved.median() and diff.max() <= 2 * 1e-4 * 2
    rows = [json.loads(line) for line in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    ddp_rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(rows, ddp_rows):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["err_ref_l"] == pytest.approx(b["err_ref_l"], rel=1e-5)
    assert rows[0]["reward_margin"] == 0 and rows[1]["reward_margin"] != 0  # the sharded reference is the base
    step1 = tmp_path / "fsdp" / "checkpoints" / "step-1"
    assert list(step1.glob("pytorch_model_fsdp*")) and not (step1 / "trainable.safetensors").exists()

    # resume from step 1's sharded checkpoint: the same final weights
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "fsdp", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-2")
    shutil.rmtree(resumed / "transformer")
    _launch(fsdp, [*train, "--out", str(resumed), "--resume"])
    again = _weights(resumed)
    for k in sharded:
        torch.testing.assert_close(again[k], sharded[k], rtol=0, atol=0)
