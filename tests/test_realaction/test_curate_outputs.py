"""What `realdpo curate` reports: seconds of footage per reason in summary.json and the data card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from realaction.config import CurateConfig
from realaction.decoding.footage import make_synthetic
from realaction.pipeline import curate
from realbase.files import read_jsonl


@pytest.fixture(scope="module")
def curated(tmp_path_factory, carphone_path) -> Path:
    src = tmp_path_factory.mktemp("src")
    shutil.copyfile(carphone_path, src / "car.mp4")
    (src / "car.txt").write_text("a man on the phone " * 500_000)  # a 9 MB caption sidecar
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


def test_a_huge_caption_sidecar_is_capped_in_manifest_and_shard(curated):
    import webdataset as wds

    from realaction.captions.captioners import MAX_CAPTION_BYTES

    kept = [r for r in read_jsonl(curated / "manifest.jsonl") if r["kept"]]
    assert kept and all(0 < len(r["caption"].encode()) <= MAX_CAPTION_BYTES for r in kept)
    samples = list(wds.WebDataset(sorted(str(p) for p in (curated / "shards").glob("*.tar")), shardshuffle=False))
    assert samples and all(len(s["txt"]) <= MAX_CAPTION_BYTES for s in samples)
    assert samples[0]["txt"].decode().startswith("a man on the phone a man")


def test_card_shows_seconds_per_reason(curated):
    summary = json.loads((curated / "summary.json").read_text())
    card = (curated / "DATA_CARD.md").read_text()
    black = summary["rejected_seconds_by_reason"]["black"]
    assert f"| black | 1 | {black} |" in card
    assert f"({summary['rejected_seconds']} s" in card


def _as_nobody(fn) -> tuple[int, str]:
    """Run `fn()` in a forked child without root's permission bypass (as the `nobody` user when we are root);
    returns (its return value as exit status, what it printed to stderr)."""
    import os
    import sys

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only modules already imported are usable once uid changes
        os.close(r)
        sys.stderr = os.fdopen(w, "w")
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            code = fn()
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 99
        sys.stderr.flush()
        os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.mark.parametrize("case", ["file", "inside-file", "proc", "read-only"])
def test_out_that_is_a_file_or_not_writable_fails_in_one_line_before_any_work(carphone_path, capsys, case):
    import os
    import sys
    import tempfile

    from cli.main import run
    from realbase.errors import UserError

    # a tree the `nobody` user can walk (pytest's own tmp folders are root's alone)
    base = Path(tempfile.mkdtemp())
    try:
        os.chmod(base, 0o755)
        src = base / "src"
        src.mkdir()
        shutil.copyfile(carphone_path, src / "car.mp4")
        (src / "car.txt").write_text("a man on the phone")
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        out = {"file": src / "car.txt", "inside-file": src / "car.txt" / "out", "proc": Path("/proc/realdpo-out"),
               "read-only": locked / "out"}[case]
        words = {"file": "existing file", "inside-file": "which is a file", "proc": "not writable",
                 "read-only": "not writable"}[case]
        if case == "read-only":
            def validate() -> int:  # what `run(argv)` does first (the CLI imports lazily, which nobody cannot)
                try:
                    CurateConfig(src=src, out=out).validate()
                except UserError as e:
                    print(f"Error: {e}", file=sys.stderr)
                    return 2
                return 0

            code, err = _as_nobody(validate)
        else:
            code, err = run(["curate", "--src", str(src), "--out", str(out)]), capsys.readouterr().err
        assert code == 2, err
        err = err.strip()
        assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err, err
        assert not (locked / "out").exists() and not (src / "car.txt" / "out").exists()
        assert (src / "car.txt").read_text() == "a man on the phone"
        assert sorted(p.name for p in src.iterdir()) == ["car.mp4", "car.txt"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_links_and_unreadable_folders_are_listed_as_skipped(tmp_path, carphone_path):
    import os

    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    shutil.copyfile(carphone_path, src / "real" / "car.mp4")
    (src / "real" / "car.txt").write_text("a man on the phone")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copyfile(carphone_path, outside / "linked.mp4")
    (outside / "linked.txt").write_text("the same man, through a link")
    os.symlink(outside, src / "more")  # a linked folder is followed
    os.symlink(src, src / "real" / "loop")  # a folder linking to its own ancestor
    os.symlink(src / "self.mp4", src / "self.mp4")  # a link to itself
    os.symlink(tmp_path / "gone.mp4", src / "gone.mp4")  # dangling
    os.symlink(src / "real", src / "again")  # the same folder twice
    out = tmp_path / "out"
    summary = curate(CurateConfig(src=src, out=out, max_side=96))
    rows = {r["source"]: r for r in read_jsonl(out / "sources.jsonl")}
    assert {k for k, r in rows.items() if r["status"] == "done"} == {"real/car.mp4", "more/linked.mp4"}
    skipped = {k: r["reason"] for k, r in rows.items() if r["status"] == "skipped"}
    assert set(skipped) == {"real/loop", "self.mp4", "gone.mp4", "again"}, skipped
    assert "loop" in skipped["real/loop"] and "loop" in skipped["self.mp4"]
    assert "dangling" in skipped["gone.mp4"] and "same folder as real" in skipped["again"]
    assert summary["sources"]["skipped"] == 4 and summary["source_skipped"] == skipped
    # a rerun lists them again, once each, and redoes nothing
    curate(CurateConfig(src=src, out=out, max_side=96))
    again = read_jsonl(out / "sources.jsonl")
    assert sorted(r["source"] for r in again) == sorted(rows)


def test_unreadable_folder_is_listed_as_skipped():
    """Without root's permission bypass, a folder that cannot be listed is reported, not silently left out."""
    import os
    import sys
    import tempfile

    from realaction.decoding.probe import Skipped, discover

    base = Path(tempfile.mkdtemp())
    try:
        os.chmod(base, 0o755)
        make_synthetic(base / "ok" / "a.mp4", "moving", seconds=0.5)
        make_synthetic(base / "locked" / "b.mp4", "moving", seconds=0.5)
        os.chmod(base / "locked", 0o000)

        def scan() -> int:
            skipped: list[Skipped] = []
            found = discover(base, skipped)
            print(json.dumps({"found": [s.rel for s in found], "skipped": [[k.rel, k.reason] for k in skipped]}),
                  file=sys.stderr)
            return 0

        code, err = _as_nobody(scan)
        assert code == 0, err
        got = json.loads(err)
        assert got["found"] == ["ok/a.mp4"]
        assert got["skipped"] == [["locked", "unreadable folder: Permission denied"]]
    finally:
        os.chmod(base / "locked", 0o755)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_scores_do_not_depend_on_max_side(tmp_path, carphone_path):
    """The filters and the text detector see the same frames whatever size the clips are written at."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(carphone_path, src / "c.mp4")
    (src / "c.txt").write_text("a man on the phone")
    scores = {}
    for side in (64, 320):
        curate(CurateConfig(src=src, out=tmp_path / f"out{side}", max_side=side, max_seconds=2.0, min_seconds=1.0))
        scores[side] = [(r["key"], r["reason"], r["scores"]) for r in read_jsonl(tmp_path / f"out{side}" / "manifest.jsonl")]
    assert scores[64] == scores[320]
    assert any(s.get("text_area") == 0.0 for _, _, s in scores[64])


@pytest.mark.parametrize("args, words", [
    (["--engine", "spark"], "--engine"),
    (["--ray-address", "auto"], "--ray-address needs --engine ray"),
    (["--max-text-area", "1.5"], "--max-text-area"),
    (["--dup-distance", "64"], "--dup-distance"),
    (["--person-model", "{missing}"], "--person-model not found"),
    (["--person-confidence", "0"], "--person-confidence"),
    (["--text-side", "8"], "--text-side"),
])
def test_new_options_fail_in_one_line(tmp_path, carphone_path, capsys, args, words):
    from cli.main import run

    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(carphone_path, src / "c.mp4")
    argv = ["curate", "--src", str(src), "--out", str(tmp_path / "out")] + [a.format(missing=tmp_path / "no.onnx") for a in args]
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "out").exists()
