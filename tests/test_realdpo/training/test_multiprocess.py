"""`realdpo train` under `accelerate launch` with two CPU processes: disjoint data, synchronised weights, one LoRA."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import synthetic_clip, tiny_model, write_tiny_shard

pytestmark = pytest.mark.slow  # two processes under accelerate launch

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_on_different_clips(tmp_path):
    keys = [f"synth-{i:04d}" for i in range(6)]
    shard = write_tiny_shard(tmp_path / "shards" / "realaction-000000.tar",
                             [(k, f"a square moving, take {i}", synthetic_clip(frames=20, seed=i)) for i, k in enumerate(keys)])
    model = tiny_model("cogvideox", "t2v")
    out = tmp_path / "run"
    # torchrun-style launch (--multi_gpu); on a machine without a GPU the trainer joins the processes over gloo
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "cli.main", "train", "--shards", str(shard), "--out", str(out), "--model", str(model),
           "--cache-dir", str(tmp_path / "latents"), "--steps", "3", "--negatives", "2", "--neg-steps", "2",
           "--lora-rank", "4", "--lr", "1e-3", "--beta", "500", "--checkpoint-every", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    logs = {r: [json.loads(line) for line in (out / "logs" / f"data-rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)}
    seen = {r: {k for row in rows for batch in row.get("keys", []) for k in batch} for r, rows in logs.items()}
    assert seen[0] and seen[1] and not seen[0] & seen[1] and seen[0] | seen[1] <= set(keys)
    checksums = {r: rows[-1]["params_checksum"] for r, rows in logs.items()}
    assert checksums[0] == checksums[1]  # gradients were all-reduced: both processes hold the same adapter
    assert sorted(p.name for p in (out / "checkpoints" / "step-3").glob("random_states_*.pkl")) == \
        ["random_states_0.pkl", "random_states_1.pkl"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # written once, by the main process

    from realdpo.models import load_spec

    spec = load_spec(model)
    g = torch.Generator().manual_seed(0)
    shape = spec.encode_videos(torch.zeros(1, *spec.default_size()[:1], 3, *spec.default_size()[1:])).shape
    args = (torch.randn(shape, generator=g), torch.randn(shape, generator=g), torch.tensor([100]),
            spec.encode_prompts(["a square"]))
    with torch.no_grad():
        before = spec.per_sample_error(spec.transformer, *args)
        spec.pipeline().load_lora_weights(str(out / "lora"))
        after = spec.per_sample_error(spec.transformer, *args)
    assert not torch.allclose(before, after)
