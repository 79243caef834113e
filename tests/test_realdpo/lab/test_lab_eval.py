"""`realdpo eval --lab` on lab videos: the tracker, plugged into the library's evaluation by the command line, adds
its physical rate and residual to the report; the library's evaluation alone refuses --lab in one line; the lab CLI
commands fail on bad options with one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cli.main import run
from realbase.errors import UserError
from realbase.video import encode_mp4
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
    assert all(row["lab_render_pass"] for rows in report["per_video"].values() for row in rows)
    assert report["settings"]["lab"]["tolerances"]["residual_rms"] == 0.8
    assert report["settings"]["lab"]["motion_checks"] == ["stall", "teleport", "residual"]


def test_library_evaluation_takes_the_lab_only_as_a_plug_in(tmp_path):
    from realdpo.configs.eval import EvalConfig
    from realdpo.evaluation.report import evaluate

    d = tmp_path / "v"
    d.mkdir()
    encode_mp4(render_clip(1).frames, FPS, crf=12, path=d / "0.mp4")
    with pytest.raises(UserError, match="--lab needs the motion lab's scorer"):
        evaluate(EvalConfig(videos=[f"a={d}"], out=tmp_path / "r", lab=True, workers=1))
    # importing and running the library's evaluation leaves the lab unimported
    code = ("import sys; from realdpo.evaluation import report, scoring; from realdpo.training import trainer; "
            "from realdpo.generation import sampling; assert not any(m.startswith('realdpo.lab') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lab_commands_reject_bad_options(tmp_path, capsys):
    assert run(["lab", "render", "--set", "nope", "--out", str(tmp_path)]) == 2
    assert run(["lab", "build", "--vae-frames", "4", "--out", str(tmp_path / "m")]) == 2
    assert run(["lab", "check", "--prompts", "0"]) == 2
    assert run(["lab", "check", "--model", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "unknown --set 'nope'" in err and "--vae-frames must be odd" in err
    assert "--prompts and --batch-size must be at least 1" in err and "not a diffusers pipeline folder" in err
    assert "Traceback" not in err


def test_lab_render_writes_clips_and_captions(tmp_path):
    assert run(["lab", "render", "--set", "web", "--count", "2", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["web-00000.mp4", "web-00000.txt", "web-00001.mp4",
                                                          "web-00001.txt", "world.jsonl"]
