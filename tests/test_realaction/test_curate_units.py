"""Curation stages on real and synthetic footage: probing, scene cuts, clip splitting, filters."""

from __future__ import annotations

import random
import shutil
import subprocess

import numpy as np
import pytest

from realaction.config import DETECTORS
from realaction.cuts.scenes import DETECTORS as SCENE_DETECTORS
from realaction.cuts.scenes import detect_cuts
from realaction.decoding.footage import make_synthetic
from realaction.decoding.probe import ProbeError, discover, probe, source_id
from realaction.decoding.segments import Segmenter, split_scenes

BIKES_CUTS = [30, 76, 137, 187, 242]


def _close(found: list[int], expected: list[int]) -> bool:
    return len(found) == len(expected) and all(abs(a - b) <= 1 for a, b in zip(sorted(found), expected))


def test_every_detector_option_has_a_pyscenedetect_class():
    import scenedetect

    assert set(DETECTORS) == set(SCENE_DETECTORS) | {"transnetv2"}
    assert all(hasattr(scenedetect, cls) for cls, _ in SCENE_DETECTORS.values())


def test_bikes_cuts_within_one_frame(bikes_path):
    assert _close(detect_cuts(bikes_path), BIKES_CUTS)


@pytest.mark.parametrize("detector", ["content", "histogram"])
def test_bikes_cuts_other_detectors(bikes_path, detector):
    assert _close(detect_cuts(bikes_path, detector=detector), BIKES_CUTS)


def test_carphone_and_real_clip_have_no_cut(carphone_path):
    assert detect_cuts(carphone_path) == []


def test_shared_real_clip_has_no_cut(shared_data):
    assert detect_cuts(shared_data / "real" / "4873105.mp4") == []


def test_synthetic_cut_at_known_frame(tmp_path):
    v = make_synthetic(tmp_path / "cut.mp4", "cut", seconds=4.0, cut_at=47)
    assert v.cuts == [47]
    assert _close(detect_cuts(v.path), [47])


def test_segments_online_equals_offline_and_never_span_a_cut():
    rng = random.Random(0)
    for trial in range(400):
        n = rng.randint(1, 400)
        cuts = sorted(rng.sample(range(1, max(2, n)), k=min(n - 1, rng.randint(0, 8)))) if n > 2 else []
        bad = set(rng.sample(range(n), k=min(n, rng.choice([0, 0, 1, 3, 12])))) if trial % 2 else set()
        if trial % 3 == 2 and n > 20:  # a run of corrupt frames, as after a damaged packet
            a = rng.randrange(n - 10)
            bad |= set(range(a, a + rng.randint(2, 10)))
        lo = rng.randint(1, 40)
        hi = rng.randint(lo, 90)
        margin = rng.randint(0, 4)
        latency = rng.randint(0, 5)
        # variable frame rate in half the trials: frame durations of 1 or 3 time units
        steps = [rng.choice([1.0, 3.0]) if trial % 4 < 2 else 1.0 for _ in range(n)]
        times = list(np.concatenate([[0.0], np.cumsum(steps)]))
        offline = split_scenes(cuts, n, lo, hi, margin, times=times[:n], end_time=times[n], unusable=bad)
        # online: cuts are reported `latency` frames after they happen
        seg = Segmenter(lo, hi, margin, latency)
        online = []
        for i in range(n):
            online += seg.push(i, times[i], [c for c in cuts if c + latency == i], unusable=i in bad)
        online += seg.finish(n, times[n], [c for c in cuts if c + latency >= n])
        assert online == offline
        assert [s.start for s in offline] == sorted(s.start for s in offline)
        for s in offline:
            assert 0 <= s.start < s.end <= n
            assert not any(s.start < c < s.end for c in cuts), "a clip spans a cut"
            if s.corrupt:
                assert set(range(s.start, s.end)) <= bad
                continue
            assert not bad & set(range(s.start, s.end)), "a clip holds a corrupt frame"
            duration = times[s.end] - times[s.start]
            assert (duration < lo) == s.too_short
            assert duration <= hi or s.length == 1
            for c in cuts:  # the margin is kept on both sides of every cut
                assert s.end <= c - margin or s.start >= c + margin
        assert set().union(*[set(range(s.start, s.end)) for s in offline if s.corrupt]) == bad


def test_segments_on_constant_frame_rate():
    """At 25 fps, 10 s clips are 250 frames and 1.5 s the shortest kept (38 frames)."""
    times = [i / 25 for i in range(700)]
    segs = split_scenes([], 700, 1.5, 10.0, 0, times=times, end_time=700 / 25)
    assert [(s.start, s.end, s.too_short) for s in segs] == [(0, 250, False), (250, 500, False), (500, 700, False)]
    segs = split_scenes([], 537, 1.5, 10.0, 0, times=times[:537], end_time=537 / 25)
    assert [(s.length, s.too_short) for s in segs] == [(250, False), (250, False), (37, True)]
    times = [i * 1001 / 30000 for i in range(120)]
    assert [s.length for s in split_scenes([], 120, 2.0, 2.0, 0, times=times, end_time=120 * 1001 / 30000)] == [59, 59, 2]


def test_source_id_is_stable_and_has_no_dots():
    a = source_id("people/walk.v2.mp4")
    assert a == source_id("people/walk.v2.mp4")
    assert "." not in a and "/" not in a
    assert a != source_id("people/walk_v2.mp4")


def test_discover_is_recursive_and_skips_other_files(tmp_path, carphone_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copyfile(carphone_path, tmp_path / "a" / "b" / "x.MOV")
    shutil.copyfile(carphone_path, tmp_path / "y.mkv")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / ".hidden").mkdir()
    shutil.copyfile(carphone_path, tmp_path / ".hidden" / "z.mp4")
    assert [s.rel for s in discover(tmp_path)] == ["a/b/x.MOV", "y.mkv"]


def test_probe_real_footage(bikes_path, carphone_path):
    b = probe(bikes_path)
    assert (b.num_frames, b.fps, b.width, b.height, b.rotation) == (250, 25.0, 640, 272, 0)
    c = probe(carphone_path)
    assert (c.width, c.height) == (176, 144) and abs(c.fps - 29.97) < 0.01 and c.num_frames == 120


@pytest.mark.parametrize("kind", ["corrupt", "empty", "text", "truncated"])
def test_probe_rejects_unreadable(tmp_path, kind):
    path = tmp_path / "bad.mp4"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n" * 50)
    else:
        make_synthetic(path, kind)
    with pytest.raises(ProbeError) as e:
        probe(path)
    assert str(e.value) and "\n" not in str(e.value)


def test_probe_reads_rotation(tmp_path, carphone_path):
    import imageio_ffmpeg

    out = tmp_path / "rotated.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-display_rotation", "90",
                    "-i", str(carphone_path), "-c", "copy", str(out)], check=True)
    p = probe(out)
    assert p.rotation in (90, 270)
    assert (p.width, p.height) == (144, 176) and (p.coded_width, p.coded_height) == (176, 144)


def test_quality_and_motion_scores_separate_static_from_moving(tmp_path):
    from realaction.filters.motion import motion_scores
    from realaction.filters.quality import quality_scores
    from realbase.video import decode_frames, to_gray

    scores = {}
    for kind in ("moving", "static", "black"):
        v = make_synthetic(tmp_path / f"{kind}.mp4", kind, seconds=2.0)
        frames = decode_frames(v.path)[::3]
        gray = to_gray(frames)
        scores[kind] = {**quality_scores(gray), **motion_scores(gray, np.arange(len(gray)) * 3 / v.fps)}
    assert scores["black"]["black_fraction"] == 1.0 and scores["moving"]["black_fraction"] == 0.0
    assert scores["static"]["subject_motion"] < 1.0 < 10.0 < scores["moving"]["subject_motion"]
    assert scores["moving"]["camera_motion"] < 3.0  # the discs move, the camera does not
    assert scores["static"]["frozen_fraction"] < 0.5  # sensor noise: static, not frozen
    assert scores["moving"]["sharpness"] > 15.0


def test_tar_writer_writes_what_webdataset_writes(tmp_path):
    """Our standard-library ShardWriter (curation must not import webdataset: it imports torch) against
    webdataset's own writer, member for member."""
    import tarfile

    import webdataset as wds

    from realaction.output.tar_writer import ShardWriter

    sample = {"__key__": "src-0001", "mp4": b"\x00video", "txt": "a caption \u00e9".encode(), "json": b"{}",
              "jpg": b"\xff\xd8"}
    ours = ShardWriter(str(tmp_path / "ours-%06d.tar"), maxcount=10)
    theirs = wds.ShardWriter(str(tmp_path / "theirs-%06d.tar"), maxcount=10, verbose=0)
    for w in (ours, theirs):
        w.write(sample)
        w.write({**sample, "__key__": "src-0002"})
        w.close()

    def members(path):
        with tarfile.open(path) as t:
            return [(m.name, m.size, m.mode, m.uname, m.gname, m.type, t.extractfile(m).read()) for m in t]

    assert members(tmp_path / "ours-000000.tar") == members(tmp_path / "theirs-000000.tar")
    read = list(wds.WebDataset(str(tmp_path / "ours-000000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in read] == ["src-0001", "src-0002"] and read[0]["txt"] == sample["txt"]


def test_fade_trim_on_exact_luma():
    from realaction.filters.quality import fade_trim

    content = np.full(50, 120.0)
    fade_in = np.linspace(0, 120, 12, endpoint=False)  # 0, 10, ..., 110: below 96 (80% of 120) up to index 9
    fade_out = fade_in[::-1]
    luma = np.concatenate([np.zeros(5), fade_in, content, fade_out, np.zeros(8)])
    assert fade_trim(luma) == (5 + 10, 10 + 8)
    assert fade_trim(content) == (0, 0)
    assert fade_trim(np.zeros(30)) == (30, 0)  # black throughout
    # a clip that gets darker without going (nearly) black is not a fade: nothing trimmed
    assert fade_trim(np.concatenate([content, np.linspace(120, 40, 20)])) == (0, 0)
    # a dark scene (level 30) keeps its frames; only its black end goes
    dark = np.concatenate([np.full(40, 30.0), np.full(6, 3.0)])
    assert fade_trim(dark) == (0, 6)
