"""No bytes from a file reach the terminal unescaped (decoder logs, file names, captions, reasons), and repeated
messages are capped."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
EVIL = b"\x1b]0;PWNED\x07\x1b[2J\x1b[H\x1b[31mFAKE PROMPT$\x1b[0m\x9b2J"


def _no_terminal_codes(data: bytes) -> None:
    for code in (b"\x1b", b"\x07", b"\x9b", "\x9b".encode()):
        assert code not in data, data[max(0, data.find(code) - 200):data.find(code) + 100]


def _corrupt_mp4() -> bytes:
    """A real H.264 mp4 whose frame data is overwritten with terminal escape sequences here and there."""
    from realbase.video import encode_mp4

    frames = np.random.default_rng(0).integers(0, 255, (20, 64, 96, 3)).astype(np.uint8)
    data = bytearray(encode_mp4(frames, 10.0))
    start, end = data.find(b"mdat"), data.find(b"moov")
    for off in range(start + 2000, end - 100, 1500):
        data[off:off + len(EVIL)] = EVIL
    return bytes(data)


def test_decoding_hostile_members_prints_nothing_from_them(tmp_path):
    """decord printed a member it cannot open verbatim ("ERROR opening: <its bytes>") and FFmpeg logged every
    damaged macroblock. Run in a child process to see what reaches file descriptor 2 from native code."""
    (tmp_path / "corrupt.mp4").write_bytes(_corrupt_mp4())
    code = f"""
import sys
from pathlib import Path
from realbase.video import decode_frames, video_info
bad = Path({str(tmp_path)!r}) / "corrupt.mp4"
for src in [{EVIL * 40!r}, bad.read_bytes(), bad, str(Path({str(tmp_path)!r}) / "x\\x1b[2J\\x07.mp4")]:
    for fn in (video_info, decode_frames):
        try:
            fn(src)
        except Exception as e:
            print(repr(str(e)))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _no_terminal_codes(proc.stderr + proc.stdout)
    assert len(proc.stderr) < 200, proc.stderr[-2000:]  # no log line per damaged macroblock
    assert b"not a readable video" in proc.stdout


@pytest.mark.slow
def test_curate_escapes_file_names_reasons_and_caps_repeats(tmp_path, carphone_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    shutil.copyfile(carphone_path, src / "car.mp4")
    (src / "car.json").write_text(json.dumps({"caption": EVIL.decode("latin-1") + "A man on the phone."}))
    (src / "corrupt.mp4").write_bytes(_corrupt_mp4())
    (src / "text.mp4").write_bytes(EVIL * 40)
    (src / "name\x1b[2J\x1b]0;T\x07.mp4").write_bytes(b"junk")  # unreadable: its row names it
    os.symlink(tmp_path / "gone", src / "a\x1b[2J\x1b]0;T\x07[bold]x.mp4")  # skipped: listed by name
    for i in range(30):  # 30 dangling links: 30 skipped paths
        os.symlink(tmp_path / f"gone{i}", src / f"gone{i:02d}.mp4")
    for i in range(14):  # 14 unreadable caption sidecars: 10 warnings, then a count
        shutil.copyfile(carphone_path, src / f"s{i:02d}.mp4")
        (src / f"s{i:02d}.json").write_text("[" * 100_000)
    proc = subprocess.run([sys.executable, "-m", "cli.main", "curate", "--src", str(src), "--out", str(out),
                           "--max-side", "64", "--max-text-area", "1", "--person-detector", "none", "--no-dedup"],
                          cwd=ROOT, capture_output=True, timeout=600)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err[-3000:]
    _no_terminal_codes(proc.stderr + proc.stdout)
    assert "Traceback" not in err
    assert "skipped a\\x1b[2J\\x1b]0;T\\x07[bold]x.mp4: dangling" in err  # escaped, and not read as rich markup
    assert err.count("skipped gone") == 19 and "... and 11 more skipped paths" in err
    assert err.count("unreadable caption sidecar s") == 10 and "... and 4 more unreadable caption sidecars" in err
    kept = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["caption"] for r in kept if r["kept"] and r["source"] == "car.mp4"} == {"FAKE PROMPT$A man on the phone."}


def test_an_error_line_naming_a_hostile_path_is_escaped(tmp_path):
    bad = tmp_path / "src\x1b]0;PWNED\x07\x1b[2J"
    bad.write_bytes(b"a file, not a folder")
    proc = subprocess.run([sys.executable, "-m", "cli.main", "curate", "--src", str(bad), "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, timeout=120)
    assert proc.returncode == 2
    _no_terminal_codes(proc.stderr + proc.stdout)
    lines = proc.stderr.decode().splitlines()
    assert lines == [f"Error: --src is not a folder: {tmp_path}/src\\x1b]0;PWNED\\x07\\x1b[2J"], lines
