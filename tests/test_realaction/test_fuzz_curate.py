"""The curation part of the fuzz test: hostile sources, sidecars and links under one --src, given to the real
`realdpo curate` in a subprocess. It must end in bounded time with exit 0, no traceback, no terminal escape code
from a file on the terminal, every source recorded (done, error or skipped), and JSON-lines files that strict
JSON readers accept."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
EVIL = b"\x1b]0;PWNED\x07\x1b[2J\x1b[H\x1b[31mFAKE\x1b[0m"
TIME_LIMIT = 240  # seconds: the whole run, a few tiny videos


def _curate(src: Path, out: Path, *extra: str) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "cli.main", "curate", "--src", str(src), "--out", str(out),
                           "--max-side", "64", "--max-text-area", "1", "--person-detector", "none", *extra],
                          cwd=ROOT, capture_output=True, timeout=TIME_LIMIT)
    return proc, time.monotonic() - t0


def _strict(path: Path) -> list[dict]:
    def refuse(name):
        raise ValueError(f"bare {name}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text(encoding="utf-8").splitlines()]


def _hostile_src(root: Path, carphone_path: Path) -> Path:
    from realbase.video import encode_mp4

    src = root / "src"
    src.mkdir()
    shutil.copyfile(carphone_path, src / "good.mp4")  # one good source among them
    (src / "good.txt").write_text("A man talks on the phone.")
    good = (src / "good.mp4").read_bytes()
    (src / "empty.mp4").write_bytes(b"")
    (src / "text.mp4").write_bytes(EVIL * 50)
    (src / "truncated.mp4").write_bytes(good[: len(good) // 3])
    corrupt = bytearray(good)
    for off in range(3000, len(corrupt) - 3000, 2000):
        corrupt[off:off + len(EVIL)] = EVIL
    (src / "corrupt.mp4").write_bytes(bytes(corrupt))
    wide = np.zeros((8, 128, 2048, 3), np.uint8)
    wide[:, :, ::7] = 200
    encode_mp4(wide, 8.0, path=src / "wide.mp4")  # analysis frames 256x16: OpenCV's flow segfaulted on those
    encode_mp4(np.full((1, 144, 176, 3), 90, np.uint8), 25.0, path=src / "oneframe.mp4")
    shutil.copyfile(carphone_path, src / "nested.mp4")
    (src / "nested.json").write_text("{\"a\":" * 50_000 + "1" + "}" * 50_000)  # RecursionError in json
    shutil.copyfile(carphone_path, src / "notext.mp4")
    (src / "notext.json").write_text(json.dumps({"caption": {"text": ["not", "a", "string"]}}))
    shutil.copyfile(carphone_path, src / "latin1.mp4")
    (src / "latin1.txt").write_bytes("un caf\xe9".encode("latin-1"))
    (src / ("esc\x1b[2J\x07name.mp4")).write_bytes(EVIL)
    (src / "folder.mp4").mkdir()
    os.mkfifo(src / "fifo.mp4")  # opening it would block forever
    os.symlink("/etc", src / "etc")
    os.symlink("/", src / "root")
    os.symlink(src, src / "loop")
    os.symlink(root / "nowhere.mp4", src / "dangling.mp4")
    return src


@pytest.mark.slow
def test_curate_survives_hostile_sources(tmp_path, carphone_path):
    src = _hostile_src(tmp_path, carphone_path)
    csv = tmp_path / "captions.csv"
    csv.write_bytes(b"path,caption\ngood.mp4,first\ngood.mp4,again\nmissing.mp4,x\nbroken\n,no path\n"
                    b"text.mp4," + EVIL + b"\n")
    out = tmp_path / "out"
    proc, seconds = _curate(src, out, "--captions-csv", str(csv))
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err and seconds < TIME_LIMIT
    for code in (b"\x1b", b"\x07"):
        assert code not in proc.stderr + proc.stdout, err[-3000:]
    rows = {r["source"]: r for r in _strict(out / "sources.jsonl")}
    status = {k: r["status"] for k, r in rows.items()}
    for name in ("good.mp4", "nested.mp4", "notext.mp4", "latin1.mp4", "wide.mp4", "oneframe.mp4", "corrupt.mp4"):
        assert status.get(name) == "done", (name, rows.get(name))
    for name in ("empty.mp4", "text.mp4", "esc\x1b[2J\x07name.mp4"):
        assert status.get(name) == "error", (name, rows.get(name))
    assert status.get("truncated.mp4") in ("done", "error")
    for name in ("etc", "root", "loop", "dangling.mp4"):
        assert status.get(name) == "skipped", (name, rows.get(name))
    assert "fifo.mp4" not in status and "folder.mp4" not in status  # neither is a video file
    manifest = _strict(out / "manifest.jsonl")
    nested = [r for r in manifest if r["source"] == "nested.mp4"]
    assert nested and all("nested too deeply" in r.get("caption_error", "") for r in nested if r["reason"] == "no-caption")
    assert any(r["kept"] for r in manifest if r["source"] == "good.mp4")
    json.loads((out / "summary.json").read_text(), parse_constant=lambda name: pytest.fail(name))
    lines = " ".join(err.split())
    for warning in ("already has a caption on line 2", "missing.mp4 is not a file under --src", "line 5: fewer fields",
                    "line 6: no path", "not text (dict)"):
        assert warning in lines, (warning, err[-3000:])


@pytest.mark.slow
def test_only_hostile_sources_is_one_line_and_exit_2(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty.mp4").write_bytes(b"")
    (src / "text.mp4").write_bytes(EVIL * 50)
    os.symlink("/etc", src / "etc")
    proc, seconds = _curate(src, tmp_path / "out")
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2 and "Traceback" not in err and seconds < TIME_LIMIT
    assert b"\x1b" not in proc.stderr + proc.stdout
    assert [line for line in err.splitlines() if line.startswith("Error:")] == [
        f"Error: none of the 2 videos under {src} could be read (reasons in {tmp_path / 'out' / 'sources.jsonl'})"]
