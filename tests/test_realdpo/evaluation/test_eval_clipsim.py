"""clipsim with a tiny random-weight open_clip model saved to disk and loaded through --clip-checkpoint/--clip-arch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_clip import write_tiny_clip

from cli.main import run
from realbase.video import encode_mp4
from realdpo.evaluation.clipsim import ClipScorer


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_clip(tmp_path_factory.mktemp("clip"))


def _frames(seed, n=5, h=40, w=56):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_score_is_the_mean_frame_text_cosine_times_100(tiny_clip):
    ckpt, arch = tiny_clip
    scorer = ClipScorer.load(str(arch), ckpt)
    frames = _frames(0)
    text = scorer.text_embedding("a person waving")
    assert torch.linalg.norm(text).item() == pytest.approx(1.0, abs=1e-5)
    img = scorer.model.image_embeddings(frames)
    expected = float(np.mean([float(img[i] @ text) for i in range(len(frames))])) * 100
    got = scorer.score(frames, text)
    assert got == pytest.approx(expected, abs=1e-4) and -100.0 <= got <= 100.0
    assert scorer.score(frames[:1], text) == pytest.approx(float(img[0] @ text) * 100, abs=1e-4)


def test_cli_reports_clipsim_per_method_and_per_video(tiny_clip, tmp_path):
    ckpt, arch = tiny_clip
    for method in ("a", "b"):
        d = tmp_path / method
        d.mkdir()
        for i in range(2):
            encode_mp4(_frames(10 * (method == "b") + i, n=8, h=48, w=64), fps=8.0, path=d / f"{i}.mp4")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a dog running\na person dancing\n")
    out = tmp_path / "report"
    assert run(["eval", "--videos", f"a={tmp_path / 'a'}", "--videos", f"b={tmp_path / 'b'}", "--out", str(out),
                "--workers", "1", "--prompts", str(prompts), "--clip-checkpoint", str(ckpt), "--clip-arch", str(arch),
                "--clip-frames", "4"]) == 0
    report = json.loads((out / "report.json").read_text())
    for method in ("a", "b"):
        rows = report["per_video"][method]
        assert all(-100 <= r["clipsim"] <= 100 for r in rows)
        assert report["methods"][method]["clipsim"] == pytest.approx(np.mean([r["clipsim"] for r in rows]), abs=1e-3)
    assert "clipsim" not in report["settings"]["skipped"]


def test_clipsim_without_prompts_is_skipped_with_a_note(tiny_clip, tmp_path):
    ckpt, arch = tiny_clip
    d = tmp_path / "v"
    d.mkdir()
    encode_mp4(_frames(1, n=8, h=48, w=64), fps=8.0, path=d / "0.mp4")
    out = tmp_path / "report"
    assert run(["eval", "--videos", f"v={d}", "--out", str(out), "--workers", "1", "--clip-checkpoint", str(ckpt),
                "--clip-arch", str(arch)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert "clipsim" not in report["methods"]["v"] and "no prompt" in report["settings"]["skipped"]["clipsim"]
