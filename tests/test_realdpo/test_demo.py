"""`realdpo demo` end to end: built-in footage curated, then RealDPO on the motion lab (the README's first command)."""

from __future__ import annotations

import json

import pytest

from cli.main import run

pytestmark = pytest.mark.slow  # the whole demo: minutes


def test_demo_curates_trains_on_the_lab_and_samples(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REALDPO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REALDPO_CACHE", str(tmp_path / "home" / "latents"))
    out = tmp_path / "demo"
    assert run(["demo", "--out", str(out), "--steps", "4", "--lab-clips", "4", "--prompts", "2"]) == 0

    manifest = [json.loads(line) for line in (out / "curated" / "manifest.jsonl").read_text().splitlines()]
    assert any(r["kept"] for r in manifest) and any(not r["kept"] for r in manifest)
    lab = [json.loads(line) for line in (out / "lab" / "curated" / "manifest.jsonl").read_text().splitlines()]
    assert len(lab) == 4 and all(r["kept"] for r in lab)
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["reward_margin"] > rows[0]["reward_margin"]
    assert (out / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "strip.png").stat().st_size > 0 and (out / "sample.mp4").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "reward margin" in printed and "preference accuracy" in printed
    assert "physical rate before" in printed
