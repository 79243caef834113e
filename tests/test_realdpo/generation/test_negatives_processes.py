"""`realdpo negatives` across processes and kills: 2 CPU processes under `accelerate launch` fill the cache
bit-identically to 1, and a run killed with SIGKILL then started again ends with the cache of one uninterrupted run,
generating only what was not cached yet; `realdpo sample --prompts` shares its videos the same way."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import synthetic_clip, tiny_model, write_tiny_shard

pytestmark = pytest.mark.slow  # processes under accelerate launch, killed and restarted

ROOT = Path(__file__).resolve().parents[3]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    clips = [(f"v{i}-0000", f"a square moving, take {i}", synthetic_clip(frames=20, seed=i)) for i in range(5)]
    clips.append(("short-0000", "too short", synthetic_clip(frames=4, seed=9)))
    return write_tiny_shard(root / "realaction-000000.tar", clips)


def _args(shard, cache, *extra):
    return ["negatives", "--shards", str(shard), "--model", str(tiny_model("cogvideox", "t2v")), "--cache-dir",
            str(cache), "--frames", "9", "--height", "64", "--width", "64", *extra]


def _single(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _tree(cache: Path) -> dict[str, bytes]:
    """Every file a reader may open (a kill can leave a hidden .tmp file, which none does, and a later run sweeps)."""
    files = {str(p.relative_to(cache)): p.read_bytes() for p in cache.rglob("*")
             if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".tmp"))}
    assert not [f for f in files if ".progress" in f]
    return files


def test_two_processes_fill_the_cache_like_one(shard, tmp_path):
    extra = ["--negatives", "3", "--negatives-from", "generated:1,noised-real:1,edited-real:1", "--neg-steps", "3",
             "--batch-size", "2"]
    one = _single(_args(shard, tmp_path / "one", *extra))
    out, err = one.communicate(timeout=600)
    assert one.returncode == 0, err[-3000:]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "cli.main", *_args(shard, tmp_path / "two", *extra)]
    two = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "15 negatives generated, 0 reused, 1 clips skipped, 0 failed" in two.stderr  # summed over both processes
    a, b = _tree(tmp_path / "one"), _tree(tmp_path / "two")
    assert len([f for f in a if "/neg/" in f and f.endswith(".safetensors")]) == 15
    assert a.keys() == b.keys() and all(a[f] == b[f] for f in a)  # bit-identical


def test_a_killed_run_resumes_to_the_uninterrupted_cache(shard, tmp_path):
    extra = ["--negatives", "2", "--neg-steps", "12", "--batch-size", "2"]
    whole = _single(_args(shard, tmp_path / "whole", *extra))
    killed = _single(_args(shard, tmp_path / "killed", *extra))
    negs = tmp_path / "killed"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and killed.poll() is None:
        if len(list(negs.rglob("neg/*/*.safetensors"))) >= 3:  # some units done, the run still going
            break
        time.sleep(0.05)
    assert killed.poll() is None, "the run finished before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    done = len(list(negs.rglob("neg/*/*.safetensors")))
    assert 3 <= done < 10
    rerun = _single(_args(shard, tmp_path / "killed", *extra))
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-3000:]
    generated, reused = map(int, re.search(r"(\d+) negatives generated, (\d+) reused", err).groups())
    assert (generated, reused) == (10 - done, done)  # nothing finished is made again
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err[-3000:]
    a, b = _tree(tmp_path / "whole"), _tree(tmp_path / "killed")
    assert a.keys() == b.keys() and all(a[f] == b[f] for f in a)


def test_sample_prompts_across_two_processes(tmp_path):
    from realbase.video import decode_frames

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a square moving, take {i}\n" for i in range(3)))
    base = ["sample", "--prompts", str(prompts), "--model", str(tiny_model("cogvideox", "t2v")), "--steps", "2",
            "--seeds-per-prompt", "2", "--batch-size", "2"]
    one = subprocess.run([sys.executable, "-m", "cli.main", *base, "--out", str(tmp_path / "one")], cwd=ROOT,
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "cli.main", *base, "--out", str(tmp_path / "two")]
    two = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "6 videos written, 0 already there" in two.stderr  # both processes' shares, counted once
    names = [f"{i}.mp4" for i in range(6)]
    assert sorted(p.name for p in (tmp_path / "two").glob("*.mp4")) == sorted(names)
    assert not list((tmp_path / "two").glob(".progress"))
    for name in names:  # the same units, so the same videos (up to the encoder's last bits)
        a = decode_frames(tmp_path / "one" / name).astype(float)
        b = decode_frames(tmp_path / "two" / name).astype(float)
        assert abs(a - b).mean() < 0.5, name
    assert (tmp_path / "one" / "prompts.txt").read_text() == (tmp_path / "two" / "prompts.txt").read_text()
