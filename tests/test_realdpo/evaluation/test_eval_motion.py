"""Motion metrics on synthetic videos with known motion, and on the real/generated clips in ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest

from realbase.video import encode_mp4
from realdpo.evaluation.motion import (
    dynamic_threshold,
    interpolate_middle,
    motion_scores,
    sample_interval,
    top_flow_magnitude,
)
from realdpo.evaluation.scoring import Job, run_job
from realdpo.evaluation.videos import working_size


def moving_square(frames=16, step=10, side=256, square=64, seed=0) -> np.ndarray:
    """A textured square crossing a flat background at `step` pixels per frame."""
    rng = np.random.default_rng(seed)
    texture = (rng.random((square, square, 3)) * 255).astype(np.uint8)
    video = np.full((frames, side, side, 3), 40, np.uint8)
    for t in range(frames):
        x = 8 + t * step
        video[t, 96:96 + square, x:x + square] = texture[:, : max(0, min(square, side - x))]
    return video


def test_static_video_is_not_dynamic_and_perfectly_smooth():
    video = np.repeat(moving_square()[:1], 16, axis=0)
    s = motion_scores(video, fps=8.0)
    assert s.dynamic is False and s.moving_pairs == 0
    assert s.motion_smoothness == pytest.approx(100.0)
    assert s.flicker == pytest.approx(0.0)


def test_square_moving_10px_per_frame_at_256px_is_dynamic():
    s = motion_scores(moving_square(step=10), fps=8.0)
    assert s.threshold == pytest.approx(6.0)
    assert s.needed_pairs == 4 and s.moving_pairs >= 12
    assert s.dynamic is True


def test_slow_square_is_not_dynamic_and_threshold_scales_with_resolution():
    assert motion_scores(moving_square(step=3), fps=8.0).dynamic is False
    assert dynamic_threshold(480, 720, 8.0, 8.0) == pytest.approx(6.0 * 480 / 256)
    assert dynamic_threshold(256, 384, 4.0, 8.0) == pytest.approx(12.0)  # VBench doubles it below 8 fps
    assert sample_interval(24.0, 8.0) == 3 and sample_interval(8.0, 8.0) == 1 and sample_interval(30.0, 8.0) == 4


def test_sampling_to_8fps_uses_every_third_frame_of_a_24fps_video():
    # 4 px/frame at 24 fps is 12 px per sampled pair at 8 fps: dynamic only because of the sampling.
    s = motion_scores(moving_square(frames=37, step=4), fps=24.0)
    assert s.needed_pairs == round(4 * 13 / 16) and s.dynamic is True
    assert motion_scores(moving_square(frames=37, step=4), fps=8.0).dynamic is False


def test_top_flow_magnitude_is_the_mean_of_the_largest_5_percent():
    flow = np.zeros((10, 10, 2), np.float32)
    flow[0, :5, 0] = 3.0  # exactly 5% of 100 pixels
    assert top_flow_magnitude(flow) == pytest.approx(3.0)


def test_interpolation_recovers_the_middle_of_a_translation():
    video = moving_square(frames=3, step=6)
    f01 = np.zeros(video.shape[1:3] + (2,), np.float32)
    f01[..., 0] = 12.0
    mid = interpolate_middle(video[0], video[2], f01, -f01)
    inner = (slice(96, 160), slice(30, 60))  # inside the square, away from its edges
    assert np.abs(mid[inner].astype(int) - video[1][inner].astype(int)).mean() < 1.0


def test_smooth_translation_beats_the_same_frames_shuffled():
    video = moving_square(step=6)
    shuffled = video[np.random.default_rng(0).permutation(len(video))]
    smooth = motion_scores(video, fps=8.0).motion_smoothness
    rough = motion_scores(shuffled, fps=8.0).motion_smoothness
    assert smooth > 99.0 and smooth > rough + 1.0


def test_flickering_video_scores_worse_flicker():
    video = moving_square(step=6)
    flicker = video.astype(np.int16)
    flicker[::2] += 40
    flicker = np.clip(flicker, 0, 255).astype(np.uint8)
    steady = motion_scores(video, fps=8.0).flicker
    flickering = motion_scores(flicker, fps=8.0).flicker
    assert steady < 1.0 and flickering > 10 * steady + 5.0


def test_scores_survive_an_mp4_round_trip(tmp_path):
    path = tmp_path / "square.mp4"
    encode_mp4(np.concatenate([moving_square(step=10), moving_square(step=10)]), fps=8.0, path=path)
    res = run_job(Job("m", 0, path.name, path, short_side=256, sample_fps=8.0, clip_frames=4, fvd=True, strip=True))
    assert res.error is None
    assert res.scores["dynamic"] is True and res.scores["frames"] == 32 and res.scores["fps"] == 8.0
    assert res.clip_images.shape == (4, 256, 256, 3) and res.fvd_clip.shape == (16, 224, 224, 3)
    assert res.strip.ndim == 3 and res.strip.shape[0] == 96


def test_unreadable_video_is_reported_not_raised(tmp_path):
    bad = tmp_path / "0.mp4"
    bad.write_bytes(b"not a video")
    res = run_job(Job("m", 0, bad.name, bad, short_side=256, sample_fps=8.0))
    assert res.error and res.error.startswith("cannot decode")


def test_working_size_keeps_aspect_and_never_upscales():
    assert working_size(720, 480, 256) == (384, 256)
    assert working_size(176, 144, 256) == (176, 144)
