"""`realdpo eval --lab` on lab videos: the tracker's physical rate and residual join the report, and the lab CLI
commands fail on bad options with one line."""

from __future__ import annotations

import json

from cli.main import run
from realaction.video_io import encode_mp4
from realdpo.lab.world import FPS, derive_seed, render_clip


def test_eval_lab_reports_physical_rate(tmp_path):
    for kind in ("physical", "teleport"):
        d = tmp_path / kind
        d.mkdir()
        for i in range(3):
            encode_mp4(render_clip(derive_seed("eval-lab", kind, i), kind).frames, FPS, crf=12, path=d / f"{i}.mp4")
    out = tmp_path / "report"
    assert run(["eval", "--lab", "--videos", f"real={tmp_path / 'physical'}", "--videos",
                f"glitch={tmp_path / 'teleport'}", "--out", str(out), "--workers", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["methods"]["real"]["physical_rate"] == 100.0
    assert report["methods"]["glitch"]["physical_rate"] == 0.0
    assert report["methods"]["real"]["lab_residual"] < 0.8
    assert report["methods"]["real"]["lab_consistent_frames"] == 100.0
    assert report["methods"]["glitch"]["lab_balls_found"] == 100.0  # a teleport keeps every ball in view
    assert "teleport" in report["per_video"]["glitch"][0]["lab_failed"]
    assert report["settings"]["lab"]["tolerances"]["residual_rms"] == 0.8


def test_lab_commands_reject_bad_options(tmp_path, capsys):
    assert run(["lab", "render", "--set", "nope", "--out", str(tmp_path)]) == 2
    assert run(["lab", "build", "--vae-frames", "4", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "unknown --set 'nope'" in err and "--vae-frames must be odd" in err


def test_lab_render_writes_clips_and_captions(tmp_path):
    assert run(["lab", "render", "--set", "web", "--count", "2", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["web-00000.mp4", "web-00000.txt", "web-00001.mp4",
                                                          "web-00001.txt", "world.jsonl"]
