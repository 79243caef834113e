"""Per-clip image-quality scores from analysis frames (brightness, sharpness, black and frozen frames), and the
trimming of black or fading frames off a clip's ends."""

from __future__ import annotations

import numpy as np

from realaction.options import FilterOptions

BLACK_LUMA = 16.0  # a frame whose mean luma is below this is black
FADE_START = 0.2  # a clip end darker than this fraction of the clip's brightness level starts a fade ...
FADE_LEVEL = 0.8  # ... which lasts while the frames stay darker than this fraction of it
FROZEN_DIFF = 0.1  # mean absolute luma change (0-255) under which two sampled frames are the same picture (repeated frames decode identically)


def quality_scores(gray: np.ndarray) -> dict[str, float]:
    """brightness (mean luma), sharpness (mean variance of the Laplacian), black_fraction, frozen_fraction."""
    import cv2

    if len(gray) == 0:
        return {"brightness": 0.0, "sharpness": 0.0, "black_fraction": 1.0, "frozen_fraction": 1.0}
    means = gray.reshape(len(gray), -1).mean(axis=1)
    sharp = [float(cv2.Laplacian(g, cv2.CV_32F).var()) for g in gray]
    if len(gray) > 1:
        diffs = np.abs(np.diff(gray.astype(np.int16), axis=0)).reshape(len(gray) - 1, -1).mean(axis=1)
        frozen = float((diffs < FROZEN_DIFF).mean())
    else:
        frozen = 0.0
    return {
        "brightness": float(means.mean()),
        "sharpness": float(np.mean(sharp)),
        "black_fraction": float((means < BLACK_LUMA).mean()),
        "frozen_fraction": frozen,
    }


def fade_trim(luma: np.ndarray) -> tuple[int, int]:
    """(lead, trail): how many frames to trim off the start and the end of a clip as black or fading.

    `luma` is every frame's mean luma (0-255). The clip's brightness level is the 90th percentile of it. An end
    is trimmed only when its frame is black (below BLACK_LUMA) or nearly so (below FADE_START of the level); the
    trim then runs inward while the frames stay black or below FADE_LEVEL of the level, which takes the ramp of
    a fade-in or fade-out with it. A clip that is black throughout is trimmed whole (lead == len(luma)).
    """
    n = len(luma)
    if n == 0:
        return 0, 0
    level = float(np.percentile(luma, 90))

    def run(seq: np.ndarray) -> int:
        if not (seq[0] < BLACK_LUMA or seq[0] < FADE_START * level):
            return 0
        dark = (seq < BLACK_LUMA) | (seq < FADE_LEVEL * level)
        return int(np.argmin(dark)) if not dark.all() else len(seq)

    lead = run(luma)
    if lead >= n:
        return n, 0
    return lead, run(luma[::-1][: n - lead])


def quality_reasons(scores: dict[str, float], cfg: FilterOptions) -> list[str]:
    reasons = []
    if scores["black_fraction"] > cfg.max_black_fraction:
        reasons.append("black")
    if scores["brightness"] < cfg.min_brightness:
        reasons.append("too-dark")
    if scores["brightness"] > cfg.max_brightness:
        reasons.append("too-bright")
    if scores["sharpness"] < cfg.min_sharpness:
        reasons.append("blurry")
    if scores["frozen_fraction"] > cfg.max_frozen_fraction:
        reasons.append("frozen")
    return reasons
