"""`realdpo demo` end to end on the built-in model and footage: the README's first command must keep working."""

from __future__ import annotations

import json

from cli.main import run


def test_demo_curates_trains_and_samples(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REALDPO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REALDPO_CACHE", str(tmp_path / "home" / "latents"))
    out = tmp_path / "demo"
    assert run(["demo", "--out", str(out), "--steps", "4"]) == 0

    manifest = [json.loads(line) for line in (out / "curated" / "manifest.jsonl").read_text().splitlines()]
    assert any(r["kept"] for r in manifest) and any(not r["kept"] for r in manifest)
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["reward_margin"] > rows[0]["reward_margin"]
    assert (out / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (out / "sample.mp4").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "reward margin" in printed and "preference accuracy" in printed
