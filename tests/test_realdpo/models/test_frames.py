"""Pixel <-> tensor conversions of the spec interface."""

from __future__ import annotations

import warnings

import numpy as np

from realdpo.models.frames import to_tensor, to_uint8


def test_frames_round_trip_and_read_only_arrays_convert_without_warning():
    frames = np.random.default_rng(0).integers(0, 256, (3, 8, 6, 3), dtype=np.uint8)
    frozen = frames.copy()
    frozen.flags.writeable = False  # as frames decoded into a bytes buffer are
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        video = to_tensor(frozen)
    assert video.shape == (3, 3, 8, 6) and -1 <= video.min() and video.max() <= 1
    assert (to_uint8(video) == frames).all()
