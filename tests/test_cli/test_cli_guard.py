"""The CLI around a command: one run per --out folder (an flock), and a full disk said in one line."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cli.guard import LOCK_NAME, disk_full, out_lock
from cli.main import run

ROOT = Path(__file__).resolve().parents[2]
DEV_FULL = Path("/dev/full")  # the device every write to which fails with ENOSPC, as on a full disk


def _have_dev_full() -> bool:  # some containers have none, or a plain file there: never write to that
    try:
        return stat.S_ISCHR(DEV_FULL.stat().st_mode)
    except OSError:
        return False


needs_dev_full = pytest.mark.skipif(not _have_dev_full(), reason="no /dev/full device")


@pytest.mark.parametrize("command", ["curate", "train", "sample"])
def test_a_second_run_into_a_locked_out_is_refused_in_one_line(command, tmp_path, capsys):
    out = tmp_path / "out"
    argv = {"curate": ["curate", "--src", str(tmp_path), "--out", str(out)],
            "train": ["train", "--shards", str(tmp_path / "x.tar"), "--out", str(out)],
            "sample": ["sample", "--prompts", __file__, "--out", str(out)]}[command]
    with out_lock(out, command):  # another open file: flock refuses it as it would another process
        assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"Error: --out {out} is in use by another realdpo run (pid {os.getpid()}); wait for it to end "
                   "or give another --out"]


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from cli.guard import out_lock\n"
                               f"with out_lock({str(out)!r}, 'train'):\n    print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match="in use by another realdpo run"):
        with out_lock(out, "train"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with out_lock(out, "train"):
        assert (out / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_only_rank_zero_of_a_launch_takes_the_lock(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("RANK", "1")
    with out_lock(out, "sample"), out_lock(out, "sample"):
        pass
    assert not (out / LOCK_NAME).exists()


@needs_dev_full
def test_real_disk_full_errors_are_recognised(tmp_path):
    """What a plain write raises when the disk is full (/dev/full answers ENOSPC). (Not torch.save, whose error on
    the device is about stream positions, unlike on a full disk; not safetensors' save_file, which replaces the file
    it writes and would put a plain file where the device was.)"""
    raised = []
    for write in (lambda: DEV_FULL.write_bytes(b"x" * 100_000),):
        with pytest.raises(Exception) as info:
            write()
        raised.append(info.value)
    assert all(disk_full(e) for e in raised), [repr(e) for e in raised]
    assert not disk_full(ValueError("bad value")) and not disk_full(FileNotFoundError(2, "No such file"))


def test_sample_out_of_disk_is_one_line(tiny_cogvideox_t2v, tmp_path, monkeypatch, capsys):
    """The video write hits a full disk (its bytes go to /dev/full where there is one, else the write raises what
    the OS raises): one line saying a rerun resumes."""
    import errno

    import realdpo.generation.sampling as sampling

    def write_atomic(path, data):
        if not _have_dev_full():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        with open(DEV_FULL, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()

    monkeypatch.setattr(sampling, "write_atomic", write_atomic)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a person waves\n")
    assert run(["sample", "--prompts", str(prompts), "--model", str(tiny_cogvideox_t2v), "--steps", "1",
                "--out", str(tmp_path / "o")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Error")]
    assert err == ["Error: out of disk space: free some and run the same command again; it resumes where it stopped"]
