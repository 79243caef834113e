"""The curator's decode path on real footage made awkward: corrupt frames, non-square pixels, full-range colour,
fades, filter scores that must not depend on the output size, and no torch in curation processes."""

from __future__ import annotations

import io
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


def ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True)


def samples(out: Path) -> list[dict]:
    import webdataset as wds

    return list(wds.WebDataset(sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255 ** 2 / max(mse, 1e-12)))


def decoded_rgb(path, size=None) -> tuple[list[np.ndarray], list[bool]]:
    """Every frame as RGB (PyAV, honouring the colour range) and whether FFmpeg marked it corrupt; a packet the
    decoder rejects is skipped (the frames around it still come)."""
    import av
    import cv2

    frames, corrupt = [], []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        for packet in c.demux(stream):
            try:
                decoded = stream.decode(packet)
            except av.error.InvalidDataError:
                continue
            for f in decoded:
                img = f.to_ndarray(format="rgb24")
                frames.append(img if size is None else cv2.resize(img, size, interpolation=cv2.INTER_AREA))
                corrupt.append(bool(f.is_corrupt))
    return frames, corrupt


def test_corrupt_frames_are_counted_and_never_kept(tmp_path, bikes_path):
    """200 flipped bytes inside the video data: one packet no longer decodes, and FFmpeg conceals the damage in
    the frames after it and marks them corrupt (which ones exactly varies with decoder threading)."""
    src = tmp_path / "src"
    src.mkdir()
    data = bytearray(bikes_path.read_bytes())
    rng = np.random.default_rng(0)
    for pos in rng.integers(int(len(data) * 0.4), int(len(data) * 0.6), 200):
        data[pos] ^= 0xFF
    (src / "damaged.mp4").write_bytes(bytes(data))
    (src / "damaged.txt").write_text("cyclists")
    _, corrupt = decoded_rgb(src / "damaged.mp4")
    bad = [i for i, c in enumerate(corrupt) if c]
    assert 10 < len(bad) < 100  # the damage is there and is flagged
    curate(CurateConfig(src=src, out=tmp_path / "out"))
    row = read_jsonl(tmp_path / "out" / "sources.jsonl")[0]
    assert row["status"] == "done" and row["decode_errors"] >= 1 and row["corrupt_frames"] > 10
    assert "corrupt" in row["warning"]
    clips = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    flagged = [set(range(c["start_frame"], c["end_frame"])) for c in clips if c["reason"] == "corrupt"]
    assert sum(map(len, flagged)) == row["corrupt_frames"]
    assert min(map(min, flagged)) >= bad[0] - 10 and max(map(max, flagged)) <= bad[-1] + 10  # where the damage is
    for c in clips:
        if c["kept"]:
            assert not any(set(range(c["start_frame"], c["end_frame"])) & f for f in flagged), c
    assert any(c["kept"] and c["end_frame"] <= bad[0] for c in clips)  # the undamaged stretch still gives clips


@pytest.mark.slow
def test_non_square_pixels_are_resampled_to_square(tmp_path, bikes_path):
    """A 16:11 sample aspect ratio: 640x272 stored, 931x272 on screen; the clip is written 640x187-ish, unsquashed."""
    import decord

    src = tmp_path / "src"
    src.mkdir()
    ffmpeg("-i", str(bikes_path), "-frames:v", "75", "-vf", "setsar=16/11", "-c:v", "libx264", "-preset", "veryfast",
           "-crf", "16", str(src / "anamorphic.mp4"))
    (src / "anamorphic.txt").write_text("cyclists")
    curate(CurateConfig(src=src, out=tmp_path / "out", min_seconds=1.0))
    meta = json.loads(samples(tmp_path / "out")[0]["json"])
    assert abs(meta["width"] / meta["height"] - (640 * 16 / 11) / 272) < 0.02 and meta["width"] == 640
    written = decord.VideoReader(io.BytesIO(samples(tmp_path / "out")[0]["mp4"]))[0].asnumpy()
    source, _ = decoded_rgb(bikes_path, size=(meta["width"], meta["height"]))
    squashed, _ = decoded_rgb(bikes_path, size=(meta["width"], 640 * 272 // 640))
    k = meta["start_frame"]
    assert psnr(written, source[k]) > 30
    assert written.shape[:2] != squashed[k].shape[:2]  # not the stored 640x272 geometry
    assert read_jsonl(tmp_path / "out" / "sources.jsonl")[0]["sample_aspect_ratio"] == "16:11"


def test_full_range_source_keeps_its_contrast(tmp_path, bikes_path):
    """mjpeg decodes to full-range yuvj420p: the written (limited-range) clip must look like the source."""
    import decord

    src = tmp_path / "src"
    src.mkdir()
    ffmpeg("-i", str(bikes_path), "-frames:v", "75", "-c:v", "mjpeg", "-q:v", "2", "-pix_fmt", "yuvj420p",
           str(src / "mjpeg.avi"))
    (src / "mjpeg.txt").write_text("cyclists")
    curate(CurateConfig(src=src, out=tmp_path / "out", min_seconds=1.0))
    s = samples(tmp_path / "out")[0]
    meta = json.loads(s["json"])
    vr = decord.VideoReader(io.BytesIO(s["mp4"]))
    source, _ = decoded_rgb(src / "mjpeg.avi")
    scores = [psnr(vr[j].asnumpy(), source[meta["start_frame"] + j]) for j in range(0, len(vr), 10)]
    assert min(scores) > 38  # 29 dB when full-range pixels were written as limited-range ones


@pytest.mark.slow
def test_max_side_does_not_change_any_score(tmp_path, bikes_path, carphone_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(bikes_path, src / "bikes.mp4")
    shutil.copyfile(carphone_path, src / "car.mp4")
    for name in ("bikes", "car"):
        (src / f"{name}.txt").write_text("people")
    rows = {}
    for side in (640, 96):
        curate(CurateConfig(src=src, out=tmp_path / f"out{side}", max_side=side))
        rows[side] = [(r["key"], r["scores"], r["reasons"]) for r in read_jsonl(tmp_path / f"out{side}" / "manifest.jsonl")]
    assert rows[640] == rows[96] and len(rows[640]) > 5


def test_analysis_side_below_the_flow_minimum_is_refused(tmp_path, carphone_path):
    cfg = CurateConfig(src=tmp_path, out=tmp_path / "out", analysis_side=8)
    with pytest.raises(UserError, match="--analysis-side"):
        cfg.validate()
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(carphone_path, src / "car.mp4")
    (src / "car.txt").write_text("a man on the phone")
    curate(CurateConfig(src=src, out=tmp_path / "out", analysis_side=32))  # the minimum works on real footage
    assert read_jsonl(tmp_path / "out" / "sources.jsonl")[0]["status"] == "done"


def test_fades_are_trimmed_not_rejected(tmp_path, carphone_path):
    """carphone with a 0.6 s fade-in from black, a 1 s fade-out and 2.5 s of black: 33% black frames, which the
    black filter rejects whole; trimmed, the talking man is kept."""
    from realbase.video import decode_frames, encode_mp4

    frames = decode_frames(carphone_path)  # 120 frames at 29.97 fps
    ramp_in, ramp_out, black = 18, 30, 75
    w_in = np.linspace(0, 1, ramp_in)[:, None, None, None]
    w_out = np.linspace(1, 0, ramp_out)[:, None, None, None]
    video = np.concatenate([(frames[:ramp_in] * w_in).astype(np.uint8), frames[ramp_in:-ramp_out],
                            (frames[-ramp_out:] * w_out).astype(np.uint8), np.zeros((black, *frames.shape[1:]), np.uint8)])
    src = tmp_path / "src"
    src.mkdir()
    encode_mp4(video, 30000 / 1001, path=src / "fade.mp4")
    (src / "fade.txt").write_text("a man on the phone")
    curate(CurateConfig(src=src, out=tmp_path / "out"))
    clips = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert len(clips) == 1 and clips[0]["kept"], clips
    c = clips[0]
    lead, trail = c["trimmed"]
    assert 3 <= lead <= ramp_in and ramp_out + black - 24 <= trail <= ramp_out + black
    assert c["start_frame"] == lead and c["end_frame"] == len(video) - trail
    assert c["scores"]["fade"] == pytest.approx((lead + trail) / len(video), abs=1e-3)
    assert c["scores"]["black_fraction"] == 0.0


def test_a_fade_leaving_too_little_is_too_short(tmp_path, carphone_path):
    from realbase.video import decode_frames, encode_mp4

    frames = decode_frames(carphone_path)[:50]  # 1.7 s, then a 0.7 s fade-out and 1.7 s of black
    w_out = np.linspace(1, 0, 20)[:, None, None, None]
    video = np.concatenate([frames[:30], (frames[30:] * w_out).astype(np.uint8), np.zeros((50, *frames.shape[1:]), np.uint8)])
    src = tmp_path / "src"
    src.mkdir()
    encode_mp4(video, 30000 / 1001, path=src / "short.mp4")
    (src / "short.txt").write_text("a man on the phone")
    curate(CurateConfig(src=src, out=tmp_path / "out"))
    first, *rest = read_jsonl(tmp_path / "out" / "manifest.jsonl")  # the black may be a scene of its own
    assert first["reason"] == "too-short" and first["trimmed"][1] >= 10 and first["scores"]["fade"] > 0.2
    assert all(c["reason"] == "black" for c in rest)


@pytest.mark.slow
def test_curation_never_imports_torch(tmp_path, bikes_path, carphone_path):
    """A fake torch that refuses to import, first on the path of the main process and of the pool's workers."""
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('curation imported torch')\n")
    src = tmp_path / "src"
    src.mkdir()
    for name, path in (("bikes.mp4", bikes_path), ("car.mp4", carphone_path)):
        shutil.copyfile(path, src / name)
        (src / name).with_suffix(".txt").write_text("people")
    code = ("import sys\nfrom realaction.config import CurateConfig\nfrom realaction.pipeline import curate\n"
            f"s = curate(CurateConfig(src={str(src)!r}, out={str(tmp_path / 'out')!r}, workers=2))\n"
            "assert 'torch' not in sys.modules\nprint('kept', s['kept'])\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert all(row["status"] == "done" for row in read_jsonl(tmp_path / "out" / "sources.jsonl"))
    assert "kept" in r.stdout and int(r.stdout.split("kept")[1]) > 0
