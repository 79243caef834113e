"""Curation data quality: non-finite scores, valid JSON lines, clean captions, reported caption problems, the
data card's maxima and its account of mixed configurations."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from realaction.config import CurateConfig
from realaction.pipeline import curate
from realbase.files import jsonl_text, read_jsonl

FAST = dict(max_side=64, max_text_area=1.0, person_detector="none", dedup=False)  # the cheap filters only


def _strict_rows(path: Path) -> list[dict]:
    """Rows of a JSON-lines file, refusing bare NaN/Infinity as a strict JSON reader does."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines() if line.strip()]


# -- non-finite scores -----------------------------------------------------------------------------------------


def _curate_one(tmp_path: Path, carphone_path: Path, **options):
    from realaction.curator import Curator, Models
    from realaction.decoding.probe import Source

    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    shutil.copyfile(carphone_path, src / "car.mp4")
    (src / "car.txt").write_text("A man talks on the phone.")
    cfg = CurateConfig(src=src, out=tmp_path / "out", **{**FAST, **options})
    curator = Curator(cfg, Models.of(cfg))
    return curator.run(Source(src / "car.mp4", "car.mp4", "car")).resolve()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_score_never_passes(tmp_path, carphone_path, monkeypatch, bad):
    import realaction.curator as curator

    real = curator.motion_scores

    def broken(gray, times):
        return {**real(gray, times), "subject_motion": bad}  # NaN < threshold is False: it used to pass

    monkeypatch.setattr(curator, "motion_scores", broken)
    result = _curate_one(tmp_path, carphone_path)
    rows = [c.row for c in result.clips]
    assert rows and result.kept == 0
    assert all(r["reason"] == "non-finite-score" and not r["kept"] for r in rows)
    assert all(r["scores"]["subject_motion"] is None for r in rows)
    for line in jsonl_text(rows).splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in a manifest line"))


def test_jsonl_rows_are_valid_json_whatever_they_hold():
    text = jsonl_text([{"a": float("nan"), "b": [float("-inf"), 1.5], "c": {"d": float("inf")}}])
    assert json.loads(text, parse_constant=lambda name: pytest.fail(name)) == {"a": None, "b": [None, 1.5], "c": {"d": None}}


def test_a_rerun_into_an_out_whose_manifest_holds_bare_nan_goes_on(tmp_path, carphone_path, capfd):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    shutil.copyfile(carphone_path, src / "car.mp4")
    (src / "car.txt").write_text("A man talks on the phone.")
    curate(CurateConfig(src=src, out=out, **FAST))
    # What an older version wrote for a NaN score: bare NaN, which strict JSON readers refuse.
    text = (out / "manifest.jsonl").read_text()
    assert '"subject_motion": ' in text
    (out / "manifest.jsonl").write_text(text.replace('"subject_motion": ', '"subject_motion": NaN, "was": ', 1))
    capfd.readouterr()
    shutil.copyfile(carphone_path, src / "car2.mp4")
    summary = curate(CurateConfig(src=src, out=out, **FAST))
    err = " ".join(capfd.readouterr().err.split())  # rich wraps at the terminal's width
    assert err.count("NaN") == 1 and "NaN/Infinity value(s) (not JSON, written by an older version): read as null" in err, err
    assert summary["sources"]["done"] == 2
    assert _strict_rows(out / "manifest.jsonl")  # valid JSON again
    json.loads((out / "summary.json").read_text(), parse_constant=lambda name: pytest.fail(name))


# -- captions --------------------------------------------------------------------------------------------------


def test_captions_lose_control_characters_escapes_and_bidi_overrides():
    from realbase.text import clean_caption

    hostile = ("\x1b[2J\x1b[H\x1b]0;pwned title\x07A man\x00 runs\r\n\tfast \u202eevil\u202c "
               "\x9b31mred\x1b[0m \u2066iso\u2069 \x07bell\x7f")
    assert clean_caption(hostile) == "A man runs fast evil red iso bell"
    ordinary = "Ein Mann läuft 🏃‍♂️ 走る — «vite», naïve café, עברית"
    assert clean_caption(ordinary) == ordinary  # ordinary Unicode text (emoji joiners, Hebrew) is kept
    assert clean_caption(5) is None and clean_caption("\x1b[31m\x1b[0m") is None


def test_a_sidecar_caption_reaches_the_shard_clean(tmp_path, carphone_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    shutil.copyfile(carphone_path, src / "car.mp4")
    (src / "car.json").write_text(json.dumps({"caption": "\x1b]0;title\x07A man\u202e talks\x1b[2J on the phone."}))
    curate(CurateConfig(src=src, out=out, **FAST))
    kept = [r for r in read_jsonl(out / "manifest.jsonl") if r["kept"]]
    assert kept and {r["caption"] for r in kept} == {"A man talks on the phone."}


def test_a_json_sidecar_caption_that_is_not_text_is_reported(tmp_path, caplog):
    from realaction.captions.captioners import CaptionRequest, SidecarCaptioner

    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "a.json").write_text(json.dumps({"caption": 5, "captions": [["nested"], "second clip"]}))
    captioner = SidecarCaptioner()
    with caplog.at_level(logging.WARNING, logger="realaction.captions.captioners"):
        got = [captioner.caption(CaptionRequest(tmp_path / "a.mp4", tmp_path, i, 0, 1, np.zeros((0,)))) for i in (0, 1)]
    assert got[0] is None and got[1].text == "second clip"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "not text" in lines[0] and "int" in lines[0] and "list" in lines[0], lines


def test_csv_rows_that_are_malformed_duplicate_or_unknown_are_each_reported(tmp_path, caplog):
    from realaction.captions.captioners import WARN_LIMIT, SidecarCaptioner

    (tmp_path / "a.mp4").write_bytes(b"")
    rows = ["path,caption", "a.mp4,first", "a.mp4,second", "missing.mp4,nobody", "a.mp4", "a.mp4,x,extra",
            ",no path", "a.mp4,   "]
    rows += [f"gone{i}.mp4,x" for i in range(WARN_LIMIT + 5)]  # many of one kind: capped
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger="realaction.captions.captioners"):
        captioner = SidecarCaptioner(tmp_path / "c.csv", tmp_path)
    lines = [r.getMessage() for r in caplog.records]
    assert captioner._csv["a.mp4"][None] == "second"
    assert sum("line 3" in x and "already has a caption on line 2" in x for x in lines) == 1
    assert sum("line 4" in x and "missing.mp4" in x and "not a file under --src" in x for x in lines) == 1
    assert sum("line 5" in x and "fewer fields" in x for x in lines) == 1
    assert sum("line 6" in x and "more fields" in x for x in lines) == 1
    assert sum("line 7" in x and "no path" in x for x in lines) == 1
    assert sum("line 8" in x and "empty caption" in x for x in lines) == 1
    assert len([x for x in lines if "not a file under --src" in x]) == WARN_LIMIT  # 1 + WARN_LIMIT + 5 unknown rows
    assert f"... and {1 + 5} more caption rows for unknown videos" in lines, lines


# -- the data card -----------------------------------------------------------------------------------------------


def test_the_card_gives_each_score_its_true_maximum(tmp_path):
    from realaction.output.report import build_summary, write_card

    rows = [{"key": f"k{i}", "source": "a.mp4", "kept": i % 2 == 0, "reason": None if i % 2 == 0 else "static",
             "start_s": 0.0, "end_s": 1.0, "scores": {"subject_motion": v}} for i, v in enumerate([1.0, 2.5, 7.3])]
    rows.append({"key": "k9", "source": "a.mp4", "kept": False, "reason": "non-finite-score", "start_s": 0, "end_s": 1,
                 "scores": {"subject_motion": None}})
    (tmp_path / "manifest.jsonl").write_text(jsonl_text(rows))
    (tmp_path / "sources.jsonl").write_text(jsonl_text([{"source": "a.mp4", "status": "done", "config_hash": "h", "kept": 2}]))
    summary = build_summary(tmp_path)
    h = summary["score_histograms"]["subject_motion"]
    assert (h["min"], h["max"]) == (1.0, 7.3)
    card = write_card(tmp_path, summary, {"src": "x"}).read_text()
    assert "| subject_motion | 3.6 | 1.0 | 7.3 |" in card
    rows[0]["scores"]["subject_motion"] = 4.0  # one value only: the histogram's top edge is 5.0, its maximum 4.0
    (tmp_path / "manifest.jsonl").write_text(jsonl_text(rows[:1]))
    card = write_card(tmp_path, build_summary(tmp_path), {"src": "x"}).read_text()
    assert "| subject_motion | 4.0 | 4.0 | 4.0 |" in card


def test_a_rerun_with_other_options_says_which_clips_came_from_which(tmp_path, carphone_path, bikes_path):
    from realaction.curator import config_hash

    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    shutil.copyfile(carphone_path, src / "car.mp4")
    (src / "car.txt").write_text("A man talks on the phone.")
    first = CurateConfig(src=src, out=out, **FAST)
    curate(first)
    shutil.copyfile(carphone_path, src / "more.mp4")
    (src / "more.txt").write_text("The same man, again.")
    second = CurateConfig(src=src, out=out, **{**FAST, "min_motion": 1.0, "max_side": 96})
    curate(second)
    card = (out / "DATA_CARD.md").read_text()
    options = card.split("## Options used")[1]
    assert "2 different configurations" in options
    h1, h2 = config_hash(first), config_hash(second)
    assert f"| `{h1}` | 1 |" in options and f"| `{h2}` | 1 |" in options
    sections = {h: options.split(f"### `{h}`")[1].split("###")[0] for h in (h1, h2)}
    assert '"max_side": 64' in sections[h1] and '"max_side": 96' in sections[h2]
    assert '"min_motion": 2.0' in sections[h1] and '"min_motion": 1.0' in sections[h2]
    rows = {r["source"]: r["config_hash"] for r in read_jsonl(out / "sources.jsonl")}
    assert rows == {"car.mp4": h1, "more.mp4": h2}


def test_csv_problems_are_reported_once_not_once_per_worker(tmp_path, carphone_path, capfd, caplog):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(carphone_path, src / "car.mp4")
    csv = tmp_path / "c.csv"
    csv.write_text("path,caption\ncar.mp4,A man on the phone.\ncar.mp4,A man talks.\nghost.mp4,nobody\n"
                   f"car.mp4,{'word ' * 2000}\n")
    with caplog.at_level(logging.WARNING):
        curate(CurateConfig(src=src, out=tmp_path / "out", captions_csv=csv, **FAST))  # the driver and a worker read it
    # This process's warnings go to pytest's log capture, the worker process's to its stderr: both count.
    said = " ".join(capfd.readouterr().err.split()) + " ".join(r.getMessage() for r in caplog.records)
    assert said.count("line 3: car.mp4 already has a caption on line 2") == 1, said
    assert said.count("ghost.mp4 is not a file under --src") == 1, said
    assert said.count("cut to the cap") == 1, said
