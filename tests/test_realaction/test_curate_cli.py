"""`realdpo curate` through the CLI: bad options fail in one line with exit 2; SIGKILL and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from cli.main import run
from realaction.decoding.footage import make_synthetic
from realbase.files import read_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_src(tmp_path, carphone_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(carphone_path, src / "c.mp4")
    (src / "c.txt").write_text("a man on the phone")
    return src


@pytest.mark.parametrize("args, words", [
    ([], "--src is required"),
    (["--src", "{missing}"], "not a folder"),
    (["--src", "{src}", "--captioner", "gpt"], "--captioner"),
    (["--src", "{src}", "--min-brightness", "300"], "--min-brightness"),
    (["--src", "{src}", "--max-black-fraction", "1.5"], "--max-black-fraction"),
    (["--src", "{src}", "--min-seconds", "5", "--max-seconds", "2"], "--min-seconds"),
    (["--src", "{src}", "--clip-checkpoint", "{missing}"], "--clip-checkpoint"),
    (["--src", "{src}", "--captioner", "clip"], "--clip-checkpoint"),
    (["--src", "{src}", "--detector", "magic"], "--detector"),
    (["--src", "{src}", "--workers", "0"], "--workers"),
    (["--src", "{src}", "--analysis-side", "8"], "--analysis-side"),  # below the optical flow's minimum
    (["--src", "{src}", "--detector", "transnetv2", "--threshold", "3"], "--threshold"),
])
def test_bad_options_fail_in_one_line(tmp_path, tiny_src, capsys, args, words):
    argv = ["curate", "--out", str(tmp_path / "out")] + [
        a.format(src=tiny_src, missing=tmp_path / "nope") for a in args]
    assert run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # failed before any work


def test_folder_without_videos_and_all_unreadable(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run(["curate", "--src", str(tmp_path / "empty"), "--out", str(tmp_path / "o1")]) == 2
    assert "no videos" in capsys.readouterr().err
    bad = tmp_path / "bad"
    make_synthetic(bad / "a.mp4", "corrupt")
    (bad / "b.mkv").write_bytes(b"")
    assert run(["curate", "--src", str(bad), "--out", str(tmp_path / "o2")]) == 2
    assert "could be read" in capsys.readouterr().err.strip().splitlines()[-1]
    rows = read_jsonl(tmp_path / "o2" / "sources.jsonl")
    assert sorted(r["status"] for r in rows) == ["error", "error"]
    assert any(r["reason"] == "empty file" for r in rows)


def test_config_file_supplies_options(tmp_path, tiny_src):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'src = "{tiny_src}"\nmax-side = 64\nperson_detector = "none"\n')
    assert run(["curate", "--config", str(cfg), "--out", str(tmp_path / "out")]) == 0
    meta = [r for r in read_jsonl(tmp_path / "out" / "manifest.jsonl") if r["kept"]]
    assert meta


def _keys_in_shards(shards: Path) -> list[str]:
    import webdataset as wds

    return [s["__key__"] for s in wds.WebDataset(sorted(str(p) for p in shards.glob("realaction-*.tar")), shardshuffle=False)]


@pytest.mark.slow
def test_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path, bikes_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        shutil.copyfile(bikes_path, src / f"bikes{i:02d}.mp4")
        (src / f"bikes{i:02d}.txt").write_text(f"cyclists, take {i}")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cli.main", "curate", "--src", str(src), "--out", str(out), "--max-side", "256",
           "--shard-max-count", "2", "--no-dedup"]  # copies of one video: keep them all
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # kill once a few sources are committed, while the rest is mid-flight
    while time.monotonic() < deadline and proc.poll() is None:
        if len([r for r in read_jsonl(out / "sources.jsonl") if r.get("status") == "done"]) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "curate finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_rows = [r for r in read_jsonl(out / "sources.jsonl") if r.get("status") == "done"]
    done_before = {r["source"] for r in done_rows}
    committed = sorted(str(out / "shards" / n) for r in done_rows for n in r.get("shards", []))
    import webdataset as wds

    keys_before = {s["__key__"] for s in wds.WebDataset(committed, shardshuffle=False)}
    assert 2 <= len(done_before) < 10

    assert subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True).returncode == 0
    rows = read_jsonl(out / "sources.jsonl")
    assert sorted(r["source"] for r in rows) == sorted(f"bikes{i:02d}.mp4" for i in range(10))
    assert all(r["status"] == "done" for r in rows)
    keys = _keys_in_shards(out / "shards")
    assert not [k for k, n in Counter(keys).items() if n > 1], "a clip was written twice"
    assert keys_before and keys_before <= set(keys)  # nothing committed before the kill was lost
    manifest = read_jsonl(out / "manifest.jsonl")
    assert len({r["key"] for r in manifest}) == len(manifest)
    assert sorted(keys) == sorted(r["key"] for r in manifest if r["kept"])
    assert not [p for p in (out / "shards").iterdir() if not p.name.endswith(".tar")]
    named = {n for r in rows for n in r.get("shards", [])}
    assert named == {p.name for p in (out / "shards").glob("*.tar")}
    assert json.loads((out / "summary.json").read_text())["sources"]["done"] == 10


@pytest.mark.slow
def test_parallel_workers_match_one_worker(tmp_path, tiny_src):
    make_synthetic(tiny_src / "cut.mp4", "cut", seconds=5.0, cut_at=60, seed=2)
    (tiny_src / "cut.txt").write_text("discs")
    make_synthetic(tiny_src / "bad.mp4", "corrupt")
    results = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        assert run(["curate", "--src", str(tiny_src), "--out", str(out), "--workers", str(workers), "--max-side", "128"]) == 0
        manifest = read_jsonl(out / "manifest.jsonl")
        results[workers] = sorted((r["key"], r["kept"], r["reason"]) for r in manifest)
        assert sorted(_keys_in_shards(out / "shards")) == sorted(r["key"] for r in manifest if r["kept"])
    assert results[1] == results[2] and any(kept for _, kept, _ in results[1])
