"""`realdpo curate --engine ray` on a local Ray (2 CPUs): the same outputs as --engine local, the same guarantees."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from curate_helpers import alive, descendants, shard_keys, shard_samples, write_real_sources

from realaction.config import CurateConfig
from realaction.decoding.footage import make_synthetic
from realaction.engines.source_tasks import TEST_EXIT_ENV
from realaction.pipeline import curate
from realbase.files import read_jsonl

pytestmark = pytest.mark.slow  # a local Ray and whole curate runs

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]
CRASH = "crash/boom.mp4"  # the Ray workers of this module die when given this source


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module; its workers inherit the crash hook's variable from this process."""
    os.environ[TEST_EXIT_ENV] = CRASH
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        os.environ.pop(TEST_EXIT_ENV, None)


@pytest.fixture(scope="module")
def footage(tmp_path_factory, bikes_path, carphone_path) -> Path:
    root = tmp_path_factory.mktemp("raw")
    write_real_sources(root, bikes_path, carphone_path)
    make_synthetic(root / "syn" / "cut.mp4", "cut", seconds=5.0, cut_at=55, seed=4)
    make_synthetic(root / "syn" / "static.mp4", "static", seconds=2.5, seed=5)
    make_synthetic(root / "syn" / "corrupt.mp4", "corrupt")
    make_synthetic(root / "syn" / "tiny.mp4", "moving", seconds=2.0, size=(48, 32), seed=7)
    for name in ("cut", "static", "corrupt", "tiny"):
        (root / "syn" / f"{name}.txt").write_text(f"synthetic {name} clip")
    os.symlink(root / "syn", root / "syn" / "loop")
    return root


def _rows(path: Path, drop: tuple[str, ...]) -> list[dict]:
    rows = [{k: v for k, v in r.items() if k not in drop} for r in read_jsonl(path)]
    return sorted(rows, key=lambda r: (r.get("source", ""), r.get("key", "")))


def test_ray_engine_writes_what_the_local_engine_writes(local_ray, footage, tmp_path):
    import decord
    from PIL import Image

    outs = {}
    for engine in ("local", "ray"):
        outs[engine] = tmp_path / engine
        curate(CurateConfig(src=footage, out=outs[engine], max_side=160, engine=engine, workers=2))
    local, dist = outs["local"], outs["ray"]
    # manifest and sources: row for row (shard names and timings aside)
    assert _rows(local / "manifest.jsonl", ("shard",)) == _rows(dist / "manifest.jsonl", ("shard",))
    assert _rows(local / "sources.jsonl", ("seconds", "shards")) == _rows(dist / "sources.jsonl", ("seconds", "shards"))
    statuses = Counter(r["status"] for r in read_jsonl(dist / "sources.jsonl"))
    assert statuses == {"done": 6, "error": 1, "skipped": 1}
    # summary and card
    summaries = [json.loads((o / "summary.json").read_text()) for o in (local, dist)]
    for s in summaries:
        s.pop("shards")
    assert summaries[0] == summaries[1] and summaries[0]["kept"] >= 6
    cards = [re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", "DATE", (o / "DATA_CARD.md").read_text().split("## Options")[0])
             .replace(f"({o.name})", "(OUT)") for o in (local, dist)]
    assert cards[0] == cards[1]
    # shards: the same samples; members equal, videos equal once decoded (x264 output is not byte-reproducible)
    a, b = shard_samples(local), shard_samples(dist)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key]["json"] == b[key]["json"] and a[key]["txt"] == b[key]["txt"]
        fa, fb = (decord.VideoReader(io.BytesIO(s[key]["mp4"]))[:].asnumpy().astype(np.int16) for s in (a, b))
        assert fa.shape == fb.shape and np.abs(fa - fb).mean() < 0.5, key
        ja, jb = (np.asarray(Image.open(io.BytesIO(s[key]["jpg"]))) for s in (a, b))
        assert np.abs(ja.astype(np.int16) - jb).mean() < 0.5


def test_ray_worker_that_dies_is_an_error_not_a_retry(local_ray, tmp_path, carphone_path):
    src = tmp_path / "src"
    (src / "crash").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4", CRASH):
        shutil.copyfile(carphone_path, src / name)
        (src / name).with_suffix(".txt").write_text("a man on the phone")
    out = tmp_path / "out"
    summary = curate(CurateConfig(src=src, out=out, engine="ray", workers=2, max_side=96, dedup=False))
    rows = {r["source"]: r for r in read_jsonl(out / "sources.jsonl")}
    assert rows[CRASH]["status"] == "error" and rows[CRASH]["reason"].startswith("worker died:")
    assert rows["a.mp4"]["status"] == rows["b.mp4"]["status"] == "done"
    assert summary["sources"]["error"] == 1 and summary["kept"] == 2


def test_ray_duplicates_are_judged_in_the_driver(local_ray, tmp_path, bikes_path):
    import imageio_ffmpeg

    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(bikes_path, src / "bikes.mp4")
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(bikes_path),
                    "-vf", "scale=320:-2", "-crf", "32", str(src / "copy.mp4")], check=True)
    for name in ("bikes", "copy"):
        (src / f"{name}.txt").write_text("cyclists")
    out = tmp_path / "out"
    curate(CurateConfig(src=src, out=out, engine="ray", workers=2, max_side=160))
    rows = read_jsonl(out / "manifest.jsonl")
    by_key = {r["key"]: r for r in rows}
    dups = [r for r in rows if r["reason"] == "duplicate"]
    assert len(dups) >= 3 and len(dups) == sum(r["kept"] for r in rows)
    assert all(by_key[r["duplicate_of"]]["kept"] and by_key[r["duplicate_of"]]["source"] != r["source"] for r in dups)
    assert sorted(shard_samples(out)) == sorted(r["key"] for r in rows if r["kept"])


def test_kill_the_ray_driver_then_resume(tmp_path, bikes_path):
    """SIGKILL `realdpo curate --engine ray` (its own local Ray) mid-run, run it again: nothing lost or duplicated,
    and the killed run's Ray workers are gone."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        shutil.copyfile(bikes_path, src / f"b{i}.mp4")
        (src / f"b{i}.txt").write_text(f"cyclists, take {i}")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cli.main", "curate", "--src", str(src), "--out", str(out), "--engine", "ray",
           "--workers", "2", "--max-side", "128", "--shard-max-count", "2"]  # the copies are duplicates: dedup on
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(TEST_EXIT_ENV, None)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if len([r for r in read_jsonl(out / "sources.jsonl") if r.get("status") == "done"]) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "curate finished before it could be killed"
    workers = [p for p, c in descendants(proc.pid).items() if "default_worker" in c or "curate_source_task" in c]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = [r for r in read_jsonl(out / "sources.jsonl") if r.get("status") == "done"]
    kept_before = {r["key"] for r in read_jsonl(out / "manifest.jsonl") if r["kept"]}
    assert 2 <= len(done_before) < 8 and kept_before
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in workers):
        time.sleep(0.1)
    assert workers and not [p for p in workers if alive(p)], "Ray workers outlived the killed driver"

    assert subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True).returncode == 0
    rows = read_jsonl(out / "sources.jsonl")
    assert sorted(r["source"] for r in rows) == [f"b{i}.mp4" for i in range(8)]
    assert all(r["status"] == "done" for r in rows)
    manifest = read_jsonl(out / "manifest.jsonl")
    keys = shard_keys(out)
    assert len({r["key"] for r in manifest}) == len(manifest)
    assert sorted(keys) == sorted(r["key"] for r in manifest if r["kept"]) and kept_before <= set(keys)  # once each
    # one copy's clips are kept, every other copy's are duplicates of them, before and after the kill
    assert all(r["kept"] or r["reason"] in ("duplicate", "too-short") for r in manifest)
    assert len({r["source"] for r in manifest if r["kept"]}) == 1


def test_unreachable_ray_address_fails_in_one_line_before_any_work(tmp_path, carphone_path, capsys):
    from cli.main import run

    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(carphone_path, src / "c.mp4")
    assert run(["curate", "--src", str(src), "--out", str(tmp_path / "out"), "--engine", "ray",
                "--ray-address", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--ray-address 127.0.0.1:1" in err
    assert not (tmp_path / "out").exists()
