"""Crashes on hostile input: frames of extreme shape in the optical flow, a native crash in one source, deeply
nested caption sidecars, a symlink to a system folder, a full disk. Each: a recorded error or one line, and the
run goes on."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from realaction.config import CurateConfig
from realaction.pipeline import curate
from realbase.errors import UserError
from realbase.files import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
FAST = dict(max_side=64, max_text_area=1.0, person_detector="none", dedup=False)


def _src_with_carphone(tmp_path: Path, carphone_path: Path, names=("a.mp4",)) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    for name in names:
        shutil.copyfile(carphone_path, src / name)
        (src / name).with_suffix(".txt").write_text("A man talks on the phone.")
    return src


@pytest.mark.parametrize("size", [(256, 16), (128, 12), (48, 12), (256, 24), (4000, 2), (2, 4000)])
def test_the_flow_never_gets_a_shape_that_crashes_it(size):
    """OpenCV's DIS flow segfaulted on wide frames 12-24 pixels high (the process died with SIGSEGV). Run in a
    child process, so that a crash fails this test instead of ending the test session."""
    w, h = size
    code = ("import numpy as np, json; from realaction.filters.motion import motion_scores; "
            f"g = np.random.default_rng(0).integers(0, 255, (3, {h}, {w}), dtype=np.uint8); "
            "print(json.dumps(motion_scores(g, np.arange(3) / 4.0)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-500:])
    assert all(np.isfinite(v) for v in json.loads(proc.stdout).values())


def test_a_source_of_extreme_shape_is_curated_not_crashed(tmp_path, carphone_path):
    """A 2048x128 video (analysis frames 256x16) killed the whole `realdpo curate` with a segfault."""
    from realbase.video import encode_mp4

    src = _src_with_carphone(tmp_path, carphone_path)
    frames = np.zeros((12, 128, 2048, 3), np.uint8)
    frames[:] = ((np.arange(2048)[None, :, None] * 7) % 255).astype(np.uint8)
    for i in range(12):
        frames[i, :, i * 40:i * 40 + 64] = 255  # something moves
    encode_mp4(frames, 6.0, path=src / "wide.mp4")
    (src / "wide.txt").write_text("A bar moves.")
    proc = subprocess.run([sys.executable, "-m", "cli.main", "curate", "--src", str(src), "--out", str(tmp_path / "out"),
                           "--max-side", "64", "--max-text-area", "1", "--person-detector", "none"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-1500:])
    rows = {r["source"]: r for r in read_jsonl(tmp_path / "out" / "sources.jsonl")}
    assert rows["wide.mp4"]["status"] == "done" and rows["a.mp4"]["status"] == "done"


def test_a_native_crash_in_one_source_does_not_end_a_one_worker_run(tmp_path, carphone_path, monkeypatch):
    from realaction.engines.source_tasks import TEST_CRASH_ENV

    src = _src_with_carphone(tmp_path, carphone_path, ("a.mp4", "b.mp4", "c.mp4"))
    monkeypatch.setenv(TEST_CRASH_ENV, "b.mp4")  # the worker that gets b.mp4 segfaults in native code
    summary = curate(CurateConfig(src=src, out=tmp_path / "out", workers=1, **FAST))
    rows = {r["source"]: r for r in read_jsonl(tmp_path / "out" / "sources.jsonl")}
    assert rows["b.mp4"]["status"] == "error" and "SIGSEGV" in rows["b.mp4"]["reason"], rows["b.mp4"]
    assert rows["a.mp4"]["status"] == rows["c.mp4"]["status"] == "done"
    assert summary["sources"] == {"total": 3, "done": 2, "error": 1, "skipped": 0}


def test_a_deeply_nested_caption_sidecar_is_a_recorded_error(tmp_path, carphone_path, capfd):
    src = _src_with_carphone(tmp_path, carphone_path, ("a.mp4", "b.mp4"))
    (src / "b.txt").unlink()
    (src / "b.json").write_text("[" * 200_000 + "]" * 200_000)  # json.loads: RecursionError
    curate(CurateConfig(src=src, out=tmp_path / "out", **FAST))
    err = capfd.readouterr().err
    assert "Traceback" not in err and "RecursionError" not in err
    assert " ".join(err.split()).count("unreadable caption sidecar b.json: nested too deeply") == 1, err
    sources = {r["source"]: r for r in read_jsonl(tmp_path / "out" / "sources.jsonl")}
    assert sources["a.mp4"]["status"] == sources["b.mp4"]["status"] == "done"
    clips = [r for r in read_jsonl(tmp_path / "out" / "manifest.jsonl") if r["source"] == "b.mp4"]
    assert clips and all(r["reason"] == "no-caption" and "nested too deeply" in r["caption_error"] for r in clips)


def test_a_symlink_to_a_system_folder_is_not_followed(tmp_path, carphone_path):
    from realaction.decoding.probe import discover

    src = _src_with_carphone(tmp_path, carphone_path)
    os.symlink("/etc", src / "etc")
    os.symlink("/", src / "root")
    os.symlink(tmp_path, src / "up")  # a folder above --src: all of it would be walked
    skipped = []
    found = discover(src, skipped)
    assert [s.rel for s in found] == ["a.mp4"]
    reasons = {k.rel: k.reason for k in skipped}
    assert reasons == {"etc": "symlink to a system folder (/etc): not followed",
                       "root": "symlink to a folder above --src (/): not followed",
                       "up": f"symlink to a folder above --src ({os.path.realpath(tmp_path)}): not followed"}


def test_a_full_disk_is_one_line_and_a_rerun_resumes(tmp_path, carphone_path, monkeypatch):
    from realaction.output import tar_writer

    src = _src_with_carphone(tmp_path, carphone_path, ("a.mp4", "b.mp4"))
    out = tmp_path / "out"
    real_write = tar_writer.ShardWriter.write
    written = []

    def write(self, sample):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(sample["__key__"])
        return real_write(self, sample)

    monkeypatch.setattr(tar_writer.ShardWriter, "write", write)
    with pytest.raises(UserError) as e:
        curate(CurateConfig(src=src, out=out, shard_max_count=1, **FAST))
    message = str(e.value)
    assert "\n" not in message and "out of disk space" in message and "run the same command again" in message
    monkeypatch.setattr(tar_writer.ShardWriter, "write", real_write)
    summary = curate(CurateConfig(src=src, out=out, shard_max_count=1, **FAST))
    assert summary["sources"]["done"] == 2 and summary["kept"] == 2
