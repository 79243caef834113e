"""What `realdpo curate` reports: seconds of footage per reason in summary.json and the data card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from realaction.config import CurateConfig
from realaction.footage import make_synthetic
from realaction.pipeline import curate
from realaction.shards import read_jsonl


@pytest.fixture(scope="module")
def curated(tmp_path_factory, carphone_path) -> Path:
    src = tmp_path_factory.mktemp("src")
    shutil.copyfile(carphone_path, src / "car.mp4")
    (src / "car.txt").write_text("a man on the phone")
    make_synthetic(src / "static.mp4", "static", seconds=2.5, seed=5)
    make_synthetic(src / "black.mp4", "black", seconds=3.0)
    make_synthetic(src / "nocap.mp4", "moving", seconds=2.0, seed=6)
    for name in ("static", "black"):
        (src / f"{name}.txt").write_text(name)
    out = tmp_path_factory.mktemp("out")
    curate(CurateConfig(src=src, out=out, max_side=128))
    return out


def test_summary_gives_seconds_of_footage_per_reason(curated):
    summary = json.loads((curated / "summary.json").read_text())
    manifest = read_jsonl(curated / "manifest.jsonl")
    by_reason = {}
    for r in manifest:
        if not r["kept"]:
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0.0) + r["end_s"] - r["start_s"]
    assert set(by_reason) == {"static", "black", "no-caption"}
    assert summary["rejected_seconds_by_reason"] == pytest.approx(by_reason, abs=1e-3)
    assert summary["rejected_seconds_by_reason"]["black"] == pytest.approx(3.0, abs=0.2)
    assert summary["rejected_seconds"] == pytest.approx(sum(by_reason.values()), abs=1e-3)
    kept = sum(r["end_s"] - r["start_s"] for r in manifest if r["kept"])
    assert kept > 0 and summary["kept_seconds"] == pytest.approx(kept, abs=1e-3)


def test_card_shows_seconds_per_reason(curated):
    summary = json.loads((curated / "summary.json").read_text())
    card = (curated / "DATA_CARD.md").read_text()
    black = summary["rejected_seconds_by_reason"]["black"]
    assert f"| black | 1 | {black} |" in card
    assert f"({summary['rejected_seconds']} s" in card
