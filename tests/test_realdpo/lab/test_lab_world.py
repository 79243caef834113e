"""The motion lab's world: deterministic renders, exact physics, documented sets."""

from __future__ import annotations

import numpy as np
import pytest

from realdpo.lab.sets import WEB_UNREAL_FRACTION, set_clip, web_kind, write_set
from realdpo.lab.world import (
    EVENT_FRAMES,
    FRAMES,
    GRAVITY,
    KINDS,
    PALETTE,
    RADIUS_RANGE,
    SIZE,
    UNREAL_KINDS,
    render_clip,
    simulate,
    simulate_axis,
)


def test_render_is_a_pure_function_of_the_seed():
    for kind in KINDS:
        a, b = render_clip(123, kind), render_clip(123, kind)
        assert np.array_equal(a.frames, b.frames) and a.caption == b.caption
        assert np.array_equal(a.centers, b.centers)
    assert not np.array_equal(render_clip(1).frames, render_clip(2).frames)
    assert np.array_equal(set_clip("real", 5).frames, set_clip("real", 5).frames)
    assert not np.array_equal(set_clip("real", 5).frames, set_clip("heldout", 5).frames)


def test_clip_layout_and_ground_truth():
    clip = render_clip(7)
    assert (FRAMES, SIZE) == (9, 32) and set(PALETTE) == {"red", "blue", "white"}
    assert clip.frames.shape == (FRAMES, SIZE, SIZE, 3) and clip.frames.dtype == np.uint8
    n = clip.centers.shape[1]
    assert n == 1 and RADIUS_RANGE[0] <= clip.radii[0, 0] <= RADIUS_RANGE[1]
    assert clip.radii.shape == (FRAMES, n) and clip.visible.all()
    for f in (0, FRAMES - 1):  # the pixel at a ball's centre has the ball's colour
        for j in range(n):
            x, y = clip.centers[f, j]
            assert tuple(clip.frames[f, int(y), int(x)]) == PALETTE[clip.colors[f][j]]
    assert all(b.color in clip.caption for b in clip.balls)


def test_elastic_walls_and_gravity_are_exact():
    # glide: a triangle wave between the walls, speed kept
    x = simulate_axis(10.0, -3.0, 0.0, 5.0, 59.0, 9)
    assert np.allclose(x, [10, 7, 6, 9, 12, 15, 18, 21, 24])
    # gravity without walls in reach: the parabola
    y = simulate_axis(30.0, -2.0, GRAVITY, -1e9, 1e9, 5)
    t = np.arange(5)
    assert np.allclose(y, 30 - 2 * t + 0.5 * GRAVITY * t ** 2)
    # an elastic floor conserves energy: dropped from rest at y = 10, the ball climbs back to 10 after the bounce
    drop = simulate_axis(10.0, 0.0, GRAVITY, -1e9, 27.0, 30)  # floor hit at t = sqrt(2 * 17 / g) = 13.04
    assert drop.max() <= 27.0 and drop[:15].argmax() == 13
    assert abs(drop[20:].min() - 10.0) < 0.05 and drop[20:].argmin() + 20 == 26
    path = simulate((20.0, 25.0), (1.0, 2.0), 5.0, gravity=True, frames=FRAMES)
    assert path[:, 1].max() <= SIZE - 5.0 + 1e-9 and path[:, 1].min() >= 5.0 - 1e-9


def test_physical_clips_keep_the_ball_inside_and_moving():
    for seed in range(60):
        clip = render_clip(seed)
        r = clip.radii[0]
        assert (clip.centers >= r[None, :, None] - 1e-9).all() and (clip.centers <= SIZE - r[None, :, None] + 1e-9).all()
        steps = np.linalg.norm(np.diff(clip.centers[:, 0], axis=0), axis=-1)
        assert steps.max() <= 3.5  # glide 1-2 px/frame, fall at most ~3 px/frame in 9 frames
        assert (np.maximum(steps[:-1], steps[1:]) >= 0.9).all()  # never still for two frames running
    two = render_clip(3, n_balls=2)  # the tracker's tests use two-ball scenes: kept apart
    gap = np.linalg.norm(two.centers[:, 0] - two.centers[:, 1], axis=-1) - two.radii[0].sum()
    assert gap.min() >= 3.0


def test_captions_fit_the_text_encoder():
    from realdpo.lab.model import TEXT_TOKENS

    longest = max(len(render_clip(seed, gravity=g).caption.encode()) for seed in range(200) for g in (True, False))
    assert longest + 1 <= TEXT_TOKENS  # + the end-of-sequence byte token


@pytest.mark.parametrize("kind", UNREAL_KINDS)
def test_unreal_kinds_break_physics_where_documented(kind):
    clip = render_clip(11, kind)
    base = render_clip(11, "physical")
    assert clip.caption == base.caption  # captions never mention the glitch
    e = clip.event_frame
    assert EVENT_FRAMES[0] <= e <= EVENT_FRAMES[1]
    # motion only: the ball keeps its size, colour and visibility
    assert np.array_equal(clip.radii, base.radii) and clip.colors == base.colors and clip.visible.all()
    assert np.array_equal(clip.centers[:1], base.centers[:1]) and not np.allclose(clip.centers, base.centers)
    steps = np.linalg.norm(np.diff(clip.centers, axis=0), axis=-1)
    if kind == "teleport":
        assert steps.max() >= 6  # an 8-14 px jump, less the step it replaces
    elif kind == "stall":
        assert (steps < 1e-9).sum() >= 2


def test_web_mix_fraction_and_kinds():
    kinds = [web_kind(0, i) for i in range(3000)]
    unreal = [k for k in kinds if k != "physical"]
    assert 0.4 <= WEB_UNREAL_FRACTION <= 0.5
    assert abs(len(unreal) / len(kinds) - WEB_UNREAL_FRACTION) < 0.03
    assert set(unreal) == set(UNREAL_KINDS)
    assert all(set_clip("real", i).kind == "physical" for i in range(20))


def test_write_set_gives_mp4_and_caption_sidecars(tmp_path):
    from realbase.video import decode_frames, video_info

    paths = write_set(tmp_path, "real", 3, seed=1)
    assert [p.name for p in paths] == ["real-00000.mp4", "real-00001.mp4", "real-00002.mp4"]
    n, fps, w, h = video_info(paths[0])
    assert (n, w, h) == (FRAMES, SIZE, SIZE) and fps == pytest.approx(8.0)
    assert paths[0].with_suffix(".txt").read_text().strip() == set_clip("real", 0, 1).caption
    frames = decode_frames(paths[0])
    assert np.abs(frames.astype(int) - set_clip("real", 0, 1).frames.astype(int)).mean() < 3
    assert len((tmp_path / "world.jsonl").read_text().splitlines()) == 3


def test_physical_only_web_mix_keeps_each_clips_scene():
    """`lab build --web-unreal 0` (the positive control) trains on the same scenes with the glitches left out."""
    from realdpo.configs.lab import LabBuildConfig

    assert LabBuildConfig().web_unreal == WEB_UNREAL_FRACTION
    unreal = [i for i in range(40) if web_kind(0, i) != "physical"]
    assert unreal, "the default mix has unreal clips"
    for i in unreal[:5]:
        mixed, clean = set_clip("web", i, 0), set_clip("web", i, 0, unreal_fraction=0.0)
        assert clean.kind == "physical" and mixed.kind != "physical"
        assert clean.caption == mixed.caption and np.array_equal(clean.frames[0], mixed.frames[0])
    assert all(set_clip("web", i, 0, unreal_fraction=1.0).kind != "physical" for i in range(10))
