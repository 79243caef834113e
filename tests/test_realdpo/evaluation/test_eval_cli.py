"""`realdpo eval` end to end on two small folders: report.json per the contract, the PNGs, the table, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tiny_i3d import save_tiny_i3d

from cli.main import run
from realbase.video import encode_mp4
from realdpo.evaluation.videos import list_videos, match_prompts, read_prompts

METRIC_NAMES = {"dynamic_degree", "motion_smoothness", "flicker", "clipsim", "fvd", "pref_accuracy", "pref_margin"}


def _video(step: int, seed: int, frames: int = 18, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bg = np.kron((rng.random((size // 8, (size + frames * step) // 8 + 2, 3)) * 255).astype(np.uint8),
                 np.ones((8, 8, 1), np.uint8))
    return np.stack([bg[:size, t * step: t * step + size] for t in range(frames)])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    for method, step in (("still", 0), ("moving", 6)):
        d = root / method
        d.mkdir()
        for i in range(3):
            encode_mp4(_video(step, i), fps=8.0, path=d / f"{i}.mp4")
    real = root / "real"
    real.mkdir()
    for i in range(3):
        encode_mp4(_video(4, 10 + i), fps=8.0, path=real / f"r{i}.mp4")
    (root / "prompts.txt").write_text("a\nb\nc\n", encoding="utf-8")
    return root


@pytest.mark.slow
def test_eval_writes_the_report_pngs_and_table(folders, tmp_path, capsys):
    out = tmp_path / "report"
    i3d = save_tiny_i3d(tmp_path / "i3d_torchscript.pt")
    code = run(["eval", "--videos", f"still={folders / 'still'}", "--videos", f"moving={folders / 'moving'}",
                "--out", str(out), "--workers", "2", "--i3d", str(i3d), "--trust-i3d", "--real", str(folders / "real"),
                "--prompts", str(folders / "prompts.txt")])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report) == {"methods", "per_video", "settings", "intervals", "differences"}
    assert set(report["methods"]) == {"still", "moving"}
    for m in report["methods"].values():
        assert m["n_videos"] == 3 and isinstance(m["n_videos"], int)
        assert set(m) - {"n_videos"} <= METRIC_NAMES
        assert {"dynamic_degree", "motion_smoothness", "flicker", "fvd"} <= set(m)
        assert 0 <= m["dynamic_degree"] <= 100 and 0 <= m["motion_smoothness"] <= 100
    assert report["methods"]["still"]["dynamic_degree"] == 0.0
    assert report["methods"]["moving"]["dynamic_degree"] == 100.0
    assert report["methods"]["still"]["flicker"] < 1.0
    assert [r["file"] for r in report["per_video"]["moving"]] == ["0.mp4", "1.mp4", "2.mp4"]
    assert [r["prompt"] for r in report["per_video"]["moving"]] == ["a", "b", "c"]
    assert "clipsim" in report["settings"]["skipped"] and "pref_accuracy" in report["settings"]["skipped"]
    assert report["settings"]["fvd"]["n_real"] == 3
    for name, m in report["methods"].items():  # each mean inside its 95 % interval
        for metric in ("dynamic_degree", "motion_smoothness", "flicker"):
            lo, hi = report["intervals"][name][metric]
            assert lo <= m[metric] <= hi
    assert "fvd" not in report["intervals"]["still"]  # a distance between sets, not a mean over videos
    (diff,) = report["differences"]
    assert (diff["a"], diff["b"], diff["n_pairs"]) == ("still", "moving", 3)
    assert diff["metrics"]["dynamic_degree"] == {"diff": 100.0, "interval": [100.0, 100.0], "n_pairs": 3}
    assert report["settings"]["intervals"]["level"] == 0.95 and report["settings"]["warnings"] == []
    for png in ("metrics.png", "differences.png", "still_strip.png", "moving_strip.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "dynamic_degree" in text and "moving" in text and "skipped clipsim" in text


def test_eval_in_one_process_without_checkpoints(folders, tmp_path):
    out = tmp_path / "r"
    assert run(["eval", "--videos", f"m={folders / 'moving'}", "--out", str(out), "--workers", "1",
                "--strip-videos", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]["m"]) == {"dynamic_degree", "motion_smoothness", "flicker", "n_videos"}
    assert set(report["settings"]["skipped"]) == {"clipsim", "fvd", "pref_accuracy", "pref_margin"}
    assert not (out / "m_strip.png").exists() and (out / "metrics.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["eval", "--videos", "nofolder"], "--videos must look like NAME=DIR"),
    (["eval", "--videos", "a=/does/not/exist"], "not a folder"),
    (["eval", "--videos", "a b=."], "NAME may use"),
    (["eval", "--videos", "a=.", "--videos", "a=."], "given twice"),
    (["eval", "--videos", "a=.", "--workers", "0"], "--workers must be at least 1"),
    (["eval", "--videos", "a=.", "--i3d", "/no/i3d.pt"], "--i3d not found"),
    (["eval", "--videos", "a=.", "--clip-checkpoint", "/no/clip.pt"], "--clip-checkpoint not found"),
])
def test_bad_options_give_one_line_and_exit_2(argv, message, capsys):
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_empty_folder_and_short_prompts_file_are_user_errors(folders, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(["eval", "--videos", f"e={empty}", "--out", str(tmp_path / "o")]) == 2
    assert "no video files" in capsys.readouterr().err
    short = tmp_path / "p.txt"
    short.write_text("only one\n")
    assert run(["eval", "--videos", f"m={folders / 'moving'}", "--prompts", str(short), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--prompts has 1 lines: no line for m/1.mp4" in err[0]


def test_numeric_file_order_and_prompt_matching(tmp_path):
    for name in ("10.mp4", "2.mp4", "1.mp4", "notes.txt", "0.mp4"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "2.txt").write_text("two\n")
    vids = list_videos(tmp_path)
    assert [v.name for v in vids] == ["0.mp4", "1.mp4", "2.mp4", "10.mp4"]
    assert match_prompts(vids, None, "m") == [None, None, "two", None]
    p = tmp_path / "prompts.txt"
    p.write_text("".join(f"p{i}\n" for i in range(11)) + "\n")
    # by the number in the name, not by position: 10.mp4 is line 10 although it is the 4th video
    assert match_prompts(vids, read_prompts(p), "m") == ["p0", "p1", "p2", "p10"]


@pytest.mark.slow
def test_shared_real_and_generated_clips_all_decode_and_score(shared_data, tmp_path):
    """The paper's real clip and its three CogVideoX-generated negatives, side by side (FVD with the tiny I3D)."""
    out = tmp_path / "report"
    i3d = save_tiny_i3d(tmp_path / "i3d_torchscript.pt")
    assert run(["eval", "--videos", f"real={shared_data / 'real'}", "--videos", f"generated={shared_data / 'generated'}",
                "--out", str(out), "--workers", "1", "--flow-side", "128", "--i3d", str(i3d), "--trust-i3d",
                "--real", str(shared_data / "real" / "4873105.mp4"),
                str(shared_data / "generated" / "4873105_neg0.mp4")]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["methods"]["real"]["n_videos"] == 1 and report["methods"]["generated"]["n_videos"] == 3
    rows = report["per_video"]["real"] + report["per_video"]["generated"]
    assert [r["file"] for r in rows] == ["4873105.mp4", "4873105_neg0.mp4", "4873105_neg1.mp4", "4873105_neg2.mp4"]
    for r in rows:
        assert "error" not in r and r["frames"] >= 16 and r["dynamic"] in (True, False)
        assert (r["work_width"], r["work_height"]) == (192, 128)
        assert 50.0 < r["motion_smoothness"] <= 100.0 and 0.0 <= r["flicker"] < 60.0
    assert report["per_video"]["real"][0]["prompt"]  # the caption beside the clip
    assert report["methods"]["generated"]["fvd"] >= 0 and report["settings"]["errors"] == []


def test_non_finite_values_are_written_as_null():
    from realdpo.evaluation.report import _finite

    assert _finite({"m": {"fvd": float("nan"), "x": [1.0, float("inf")], "n_videos": 2}}) == \
        {"m": {"fvd": None, "x": [1.0, None], "n_videos": 2}}


def test_eval_matches_videos_to_prompts_by_name_and_warns_on_counts(folders, tmp_path, capsys):
    """A folder missing a video: the others keep their own prompts (by file order 2.mp4 would get line 1), the count
    mismatch is said, and the paired difference uses only the videos both folders have."""
    import shutil

    gappy = tmp_path / "gappy"
    gappy.mkdir()
    for name in ("0.mp4", "2.mp4"):
        shutil.copy(folders / "moving" / name, gappy / name)
    out = tmp_path / "report"
    assert run(["eval", "--videos", f"full={folders / 'moving'}", "--videos", f"gappy={gappy}", "--out", str(out),
                "--workers", "1", "--strip-videos", "0", "--prompts", str(folders / "prompts.txt")]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [(r["file"], r["prompt"]) for r in report["per_video"]["gappy"]] == [("0.mp4", "a"), ("2.mp4", "c")]
    warnings = report["settings"]["warnings"]
    assert any("different numbers of videos (full 3, gappy 2)" in w for w in warnings)
    assert any("gappy has videos for 2 of the 3 --prompts lines" in w for w in warnings)
    assert report["differences"][0]["n_pairs"] == 2
    text = capsys.readouterr().out
    assert "warning: the methods have different numbers of videos" in text


def test_eval_refuses_a_video_it_cannot_match_in_one_line(folders, tmp_path, capsys):
    named = tmp_path / "named"
    named.mkdir()
    (named / "take-one.mp4").write_bytes((folders / "moving" / "0.mp4").read_bytes())
    assert run(["eval", "--videos", f"n={named}", "--prompts", str(folders / "prompts.txt"),
                "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot match n/take-one.mp4 to a line" in err[0]


def test_paired_difference_of_identical_folders_is_exactly_zero(folders, tmp_path):
    out = tmp_path / "same"
    assert run(["eval", "--videos", f"a={folders / 'moving'}", "--videos", f"b={folders / 'moving'}", "--out",
                str(out), "--workers", "1", "--strip-videos", "0"]) == 0
    (diff,) = json.loads((out / "report.json").read_text())["differences"]
    assert diff["n_pairs"] == 3 and set(diff["metrics"]) == {"dynamic_degree", "motion_smoothness", "flicker"}
    for d in diff["metrics"].values():
        assert d["diff"] == 0.0 and d["interval"] == [0.0, 0.0]


def test_the_table_fits_80_columns_without_cutting_headers_or_a_pref_only_row(folders, capsys):
    from rich.console import Console

    from realdpo.evaluation.report import METRICS
    from realdpo.evaluation.table import print_table

    report = {"methods": {"base": {"motion_smoothness": 92.27, "flicker": 3.1, "n_videos": 18},
                          "realdpo-lora": {"motion_smoothness": 92.29, "flicker": 3.0, "n_videos": 18},
                          "policy": {"pref_accuracy": 62.5, "pref_margin": 0.31, "n_pairs": 24, "n_videos": 0}},
              "intervals": {"base": {"motion_smoothness": [91.8, 92.7]}}, "differences": [],
              "settings": {"skipped": {}, "errors": []}}
    console = Console(width=80, record=True, color_system=None)
    print_table(console, report, METRICS)
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    header = next(line for line in text.splitlines() if "metric" in line)
    assert "base" in header and "realdpo-lora" in header and "policy" not in header and "…" not in text
    assert "92.27" in text and "92.29" in text and "91.80–92.70" in text
    assert "pref_accuracy of policy on 24 held-out pairs: 62.5 %" in text


def test_videos_of_another_seed_are_not_paired(folders, tmp_path, capsys):
    """samples.jsonl says b's 1.mp4 was made at another seed: it is left out of the paired difference, with a word."""
    import shutil

    a, b = tmp_path / "a", tmp_path / "b"
    for folder, seeds in ((a, (0, 1, 2)), (b, (0, 7, 2))):
        shutil.copytree(folders / "moving", folder)
        (folder / "samples.jsonl").write_text("".join(
            json.dumps({"video": f"{i}.mp4", "prompt": "abc"[i], "line": i, "seed": s}) + "\n"
            for i, s in enumerate(seeds)))
    out = tmp_path / "r"
    assert run(["eval", "--videos", f"a={a}", "--videos", f"b={b}", "--out", str(out), "--workers", "1",
                "--strip-videos", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["differences"][0]["n_pairs"] == 2
    assert any("1 videos of a and b have the same name but another prompt or seed" in w
               for w in report["settings"]["warnings"])
