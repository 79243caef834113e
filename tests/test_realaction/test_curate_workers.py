"""Curation worker processes: one that dies is recorded and replaced; none outlives a killed main process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from curate_helpers import alive, children, shard_keys, wait_for

from realaction.config import CurateConfig
from realaction.engines.source_tasks import TEST_EXIT_ENV
from realaction.pipeline import curate
from realbase.files import read_jsonl

ROOT = Path(__file__).resolve().parents[2]


def _src(root: Path, footage: Path, names: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(footage, root / f"{name}.mp4")
        (root / f"{name}.txt").write_text(f"take {name}")
    return root


@pytest.mark.slow
def test_a_worker_that_dies_mid_source_is_recorded_and_the_run_goes_on(tmp_path, carphone_path, monkeypatch):
    src = _src(tmp_path / "src", carphone_path, ["a", "b", "c", "d", "e"])
    monkeypatch.setenv(TEST_EXIT_ENV, "b.mp4")  # the worker that gets b.mp4 exits at once, as if OOM-killed
    out = tmp_path / "out"
    summary = curate(CurateConfig(src=src, out=out, workers=2, max_side=96, dedup=False))
    rows = {r["source"]: r for r in read_jsonl(out / "sources.jsonl")}
    assert rows["b.mp4"]["status"] == "error" and rows["b.mp4"]["reason"] == "worker died: exit code 70"
    assert all(rows[f"{n}.mp4"]["status"] == "done" and rows[f"{n}.mp4"]["kept"] == 1 for n in "acde")
    assert summary["sources"] == {"total": 5, "done": 4, "error": 1, "skipped": 0}
    keys = shard_keys(out)
    assert len(keys) == len(set(keys)) == 4
    # the next run retries it once, and nothing is written twice
    monkeypatch.delenv(TEST_EXIT_ENV)
    curate(CurateConfig(src=src, out=out, workers=2, max_side=96, dedup=False))
    assert all(r["status"] == "done" for r in read_jsonl(out / "sources.jsonl"))
    keys = shard_keys(out)
    assert len(keys) == len(set(keys)) == 5


@pytest.mark.slow
def test_pool_replaces_each_worker_that_dies():
    """Every odd item kills the worker holding it: each is recorded, a new worker takes over, all items finish."""
    from realaction.engines.process_pool import ProcessPool, WorkerDied

    outcomes = list(ProcessPool(2, _init_identity, (), _die_on_odd).run(range(7)))
    assert sorted(o.item for o in outcomes) == list(range(7))
    for o in outcomes:
        if o.item % 2:
            assert isinstance(o.error, WorkerDied) and str(o.error) == "exit code 3"
        else:
            assert o.error is None and o.result == o.item * 10


def _init_identity(emit):
    return None


def _die_on_odd(state, item):
    if item % 2:
        os._exit(3)
    return item * 10


def _curate_cmd(src: Path, out: Path, *extra: str) -> list[str]:
    """Copies of one video stand in for distinct footage here, hence --no-dedup; one clip per shard, so sources
    are committed (and seen done) as they finish."""
    return [sys.executable, "-m", "cli.main", "curate", "--src", str(src), "--out", str(out), "--max-side", "128",
            "--no-dedup", "--shard-max-count", "1", *extra]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_a_worker_killed_with_sigkill(tmp_path, bikes_path):
    """The OOM killer's way: SIGKILL a busy worker of a real `realdpo curate --workers 2`."""
    src = _src(tmp_path / "src", bikes_path, [f"b{i}" for i in range(6)])
    out = tmp_path / "out"
    log = open(tmp_path / "stderr.txt", "wb")
    proc = subprocess.Popen(_curate_cmd(src, out, "--workers", "2"), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=log)
    assert wait_for(lambda: any(r.get("status") == "done" for r in read_jsonl(out / "sources.jsonl"))
                     or proc.poll() is not None, 120)
    workers = [pid for pid, cmd in children(proc.pid).items() if "spawn_main" in cmd and "resource_tracker" not in cmd]
    assert proc.poll() is None and len(workers) == 2, (tmp_path / "stderr.txt").read_text()[-3000:]
    os.kill(workers[0], signal.SIGKILL)
    proc.wait(timeout=300)
    err = (tmp_path / "stderr.txt").read_bytes()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"Traceback" not in err and b"BrokenProcessPool" not in err
    rows = read_jsonl(out / "sources.jsonl")
    assert sorted(r["source"] for r in rows) == [f"b{i}.mp4" for i in range(6)]
    died = [r for r in rows if r["status"] == "error"]
    assert len(died) <= 1 and all(r["reason"] == "worker died: killed by SIGKILL" for r in died)
    assert len(died) == 1, "the killed worker held no source (it was between two): nothing was tested"
    assert Counter(shard_keys(out)).most_common(1)[0][1] == 1


@pytest.mark.slow
def test_killing_curate_leaves_no_worker_behind(tmp_path, bikes_path):
    """SIGKILL the main process of `realdpo curate --workers 2` mid-run: every child exits within a few seconds."""
    src = _src(tmp_path / "src", bikes_path, [f"b{i}" for i in range(6)])
    out = tmp_path / "out"
    proc = subprocess.Popen(_curate_cmd(src, out, "--workers", "2"), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: len([p for p, c in children(proc.pid).items() if "spawn_main" in c]) >= 2
                     and any(r.get("status") == "done" for r in read_jsonl(out / "sources.jsonl")), 120)
    kids = children(proc.pid)
    assert proc.poll() is None and len(kids) >= 2
    proc.kill()
    proc.wait()
    t0 = time.monotonic()
    assert wait_for(lambda: not any(alive(pid) for pid in kids), 5.0), \
        f"still alive {time.monotonic() - t0:.1f} s after the kill: {[k for k in kids if alive(k)]}"
    # and the run resumes as ever
    assert subprocess.run(_curate_cmd(src, out, "--workers", "2"), cwd=ROOT, env=_env(),
                          capture_output=True).returncode == 0
    assert all(r["status"] == "done" for r in read_jsonl(out / "sources.jsonl"))
    keys = shard_keys(out)
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("how", ["pdeathsig", "watchdog"])
def test_die_with_parent(tmp_path, how):
    """A grandchild that armed die_with_parent exits when its parent is SIGKILLed, by the kernel signal or, where
    that is unavailable, by the parent-pid watchdog alone."""
    pid_file = tmp_path / "grandchild.pid"
    code = f"""
import os, sys, time
sys.path.insert(0, {str(ROOT)!r})
from realaction.engines import process_pool
if {how == "watchdog"!r}:
    process_pool.sys.platform = "other"  # no prctl: only the watchdog thread
parent = os.getpid()
if os.fork() == 0:
    process_pool.die_with_parent(parent, poll_seconds=0.2)
    open({str(pid_file)!r}, "w").write(str(os.getpid()))
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""
    parent = subprocess.Popen([sys.executable, "-c", code])
    assert wait_for(lambda: pid_file.is_file() and pid_file.read_text(), 30)
    grandchild = int(pid_file.read_text())
    assert alive(grandchild)
    parent.kill()
    parent.wait()
    assert wait_for(lambda: not alive(grandchild), 3.0)
