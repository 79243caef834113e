"""bench/gpu_check.py, the device check, kept from rotting while no GPU is lent: its --dry-run runs the same code on
the CPU (depth 1, two heads, tiny videos) and its CPU peaks must match bench/memory.py's meta-device predictions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"


@pytest.mark.slow
def test_dry_run_measures_every_section(tmp_path):
    out = tmp_path / "check"
    run = subprocess.run([sys.executable, str(SCRIPT), str(out), "--dry-run"], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["dry_run"] and result["environment"]["device"] == "cpu"
    sections = result["sections"]
    assert set(sections) == {"memory:CogVideoX-5B-I2V", "step-time", "negatives", "memory:Wan2.2-TI2V-5B"}
    for name in ("memory:CogVideoX-5B-I2V", "memory:Wan2.2-TI2V-5B"):
        r = sections[name]
        for side in ("realdpo", "official"):
            assert r[side]["loss_finite"]
            # the tracker's count of the real CPU step against bench/memory.py's simulation of the same step (run
            # by the --predict processes the GPU run uses too)
            assert 0.9 < r[side]["measured_over_predicted"] < 1.1, (name, side, r[side])
        assert r["mem_ratio"] < 1  # no reference copy
    st = sections["step-time"]
    passes = st["passes_median_s"]
    # the trainer's one-process LoRA order: every row once, no no-grad winner pass
    assert passes["realdpo"]["policy forward, no grad"] == 0 and passes["official"]["policy forward, no grad"] == 0
    assert all(passes[side]["policy forward"] > 0 for side in passes)
    assert all(passes[side]["backward"] > 0 for side in passes)
    assert st["time_ratio"] > 0 and len(st["paired_ratios"]) == 1
    neg = sections["negatives"]
    assert neg["batch_1"]["sampler_steps_per_s"] > 0 and neg["batch_2"]["sampler_steps_per_s"] > 0
    assert not list(out.glob("prediction_*.json"))  # the prediction processes' files, merged and removed
    table = (out / "gpu_check.md").read_text()
    assert table.startswith("| check | realdpo | official-style loop | ratio |")
    assert "CogVideoX-5B-I2V peak" in table and "negatives, batch 2" in table


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_without_cuda_it_says_so_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["gpu_check: no CUDA device; use --dry-run to run the same code on the CPU"]
    assert not (tmp_path / "gpu_check.json").exists()
