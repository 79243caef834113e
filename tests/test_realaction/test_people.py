"""PersonDetector on real footage (a man talking, a seated person eating) and on synthetic clips without people."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from realaction.filters.people import KINDS, PersonDetector
from realbase.errors import UserError
from realbase.video import decode_frames, video_info


def analysis_frames(path, n: int = 16, side: int = 256) -> np.ndarray:
    """`n` evenly spaced frames at `side` px longest side, as the pipeline hands them to the filters."""
    total, _, w, h = video_info(path)
    s = side / max(w, h)
    idx = np.linspace(0, total - 1, n).round().astype(int)
    return decode_frames(path, idx, size=(round(w * s) // 2 * 2, round(h * s) // 2 * 2))


def synthetic_clip(n: int = 16, seed: int = 0) -> np.ndarray:
    """Moving coloured rectangles over a noisy background: no person anywhere."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, 144, 256, 3), dtype=np.uint8)
    boxes = [(rng.integers(0, 200), rng.integers(0, 100), tuple(int(c) for c in rng.integers(0, 256, 3))) for _ in range(4)]
    for t in range(n):
        for x, y, colour in boxes:
            x0, y0 = int(x + 3 * t) % 220, int(y + 2 * t) % 110
            cv2.rectangle(frames[t], (x0, y0), (x0 + 36, y0 + 30), colour, -1)
    return frames


@pytest.fixture(scope="module")
def detectors() -> dict[str, PersonDetector]:
    return {kind: PersonDetector(kind) for kind in KINDS}


@pytest.mark.parametrize("kind", ["haar", "hog+haar"])
def test_man_talking_scores_high(detectors, carphone_path, kind):
    # his head is tilted in the second half of the clip: found by the turned frontal-face pass
    assert detectors[kind].score(analysis_frames(carphone_path)) >= 0.8


@pytest.mark.parametrize("kind", ["haar", "hog+haar"])
def test_seated_person_eating_scores_high(detectors, shared_data, kind):
    assert detectors[kind].score(analysis_frames(shared_data / "real" / "4873105.mp4")) >= 0.6


@pytest.mark.parametrize("kind", KINDS)
def test_synthetic_clip_without_people_scores_zero(detectors, kind):
    assert detectors[kind].score(synthetic_clip()) <= 0.125
    assert detectors[kind].score(np.full((8, 144, 256, 3), 90, np.uint8)) == 0.0


def test_scores_at_most_max_frames_and_handles_empty_input(carphone_path):
    frames = analysis_frames(carphone_path, n=40)
    det = PersonDetector("haar", max_frames=4)
    assert det.score(frames) in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert det.score(np.zeros((0, 144, 256, 3), np.uint8)) == 0.0


def test_unknown_kind_is_a_user_error():
    with pytest.raises(UserError, match="unknown person detector"):
        PersonDetector("yolo")

