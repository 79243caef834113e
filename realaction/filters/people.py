"""Offline person detection with OpenCV's HOG people detector and its bundled Haar cascades.

`PersonDetector(kind).score(frames)` is the fraction of scored frames in which at least one
detector of `kind` finds a person:
- "hog": the HOG + linear-SVM pedestrian detector (full, upright bodies at least 128 px tall
  in the detection image; frames are upscaled up to 2x so people ~64 px tall in the analysis
  frame are found). It misses close-ups and seated people.
- "haar": the Haar cascades for frontal faces (also on the frame turned by +-20 degrees, for
  tilted heads), profile faces (both directions), upper bodies and full bodies.
- "hog+haar": either.

At most `max_frames` frames (default 8), evenly spaced, are scored per call: the score is a
fraction, and scoring every analysis frame would cost more than decoding the clip. Per frame the
Haar cascades run first (faces are the commonest hit), then HOG, stopping at the first hit.
Cost (hog+haar, one core, 256 px frames, OpenCV 4.14): ~50-90 ms per frame with a person, ~200 ms without.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from realbase.errors import UserError
from realbase.fields import one_of
from realbase.video import evenly_spaced

KINDS = ("hog", "haar", "hog+haar")

# (cascade file, minNeighbors, minimum last-stage weight, mirror). The upper-body cascade fires on
# noise and clutter with weights up to ~1.7 (real faces score 2-13), hence its higher floor.
_CASCADES = (
    ("haarcascade_frontalface_default.xml", 5, 1.0, False),
    ("haarcascade_profileface.xml", 4, 1.0, False),
    ("haarcascade_profileface.xml", 4, 1.0, True),  # the profile cascade only sees faces looking one way
    ("haarcascade_upperbody.xml", 4, 2.5, False),
    ("haarcascade_fullbody.xml", 3, 1.0, False),
)
_TILTS = (-20.0, 20.0)  # degrees the frame is also turned for the frontal-face cascade
_HOG_MIN_WEIGHT = 0.7  # SVM margin; weaker HOG hits on noise and clutter reach ~0.6
_HOG_MIN_SIDE = 256  # the detection image's shorter side (the window is 64x128)


def _cv2():
    import cv2

    if not hasattr(cv2, "HOGDescriptor") or not hasattr(cv2, "CascadeClassifier"):
        raise UserError(
            f"the HOG/Haar person detectors need opencv-python < 5 (found {cv2.__version__}, which moved them out); "
            "install opencv-python<5 or use --person-detector none"
        )
    return cv2


def person_fraction(has_person, frames: np.ndarray, max_frames: int) -> float:
    """Fraction of (up to `max_frames` evenly spaced) frames [T, H, W, 3] for which `has_person(frame)` holds; 0 for
    no frames. Shared by every person detector's `score`."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) == 0:
        return 0.0
    picked = evenly_spaced(frames, max_frames)
    return sum(bool(has_person(f)) for f in picked) / len(picked)


class PersonDetector:
    def __init__(self, kind: str, max_frames: int = 8):
        one_of(kind, KINDS, "person detector")
        cv2 = _cv2()
        self.kind = kind
        self.max_frames = max(1, int(max_frames))
        self._hog = None
        self._cascades: list[tuple[object, int, float, bool]] = []
        if "haar" in kind:
            root = Path(cv2.data.haarcascades)
            for name, neighbours, min_weight, mirror in _CASCADES:
                cascade = cv2.CascadeClassifier(str(root / name))
                if cascade.empty():
                    raise UserError(f"OpenCV's Haar cascade {name} is missing from {root}")
                self._cascades.append((cascade, neighbours, min_weight, mirror))
        if "hog" in kind:
            self._hog = cv2.HOGDescriptor()
            self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    def score(self, frames: np.ndarray) -> float:
        """Fraction of (up to `max_frames` evenly spaced) frames [T, H, W, 3] uint8 RGB with a person."""
        return person_fraction(self.has_person, frames, self.max_frames)

    def has_person(self, frame: np.ndarray) -> bool:
        cv2 = _cv2()
        frame = np.ascontiguousarray(frame)
        if self._cascades:
            gray = cv2.equalizeHist(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
            flipped = None
            min_side = max(20, min(gray.shape) // 10)
            for cascade, neighbours, min_weight, mirror in self._cascades:
                if mirror:
                    flipped = cv2.flip(gray, 1) if flipped is None else flipped
                _, _, weights = cascade.detectMultiScale3(
                    flipped if mirror else gray, scaleFactor=1.1, minNeighbors=neighbours,
                    minSize=(min_side, min_side), outputRejectLevels=True,
                )
                if len(weights) and float(np.max(weights)) >= min_weight:
                    return True
            # The frontal-face cascade misses heads tilted by more than ~10 degrees, common in real footage.
            face, neighbours, min_weight, _ = self._cascades[0]
            h, w = gray.shape
            for angle in _TILTS:
                turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
                tilted = cv2.warpAffine(gray, turn, (w, h), borderMode=cv2.BORDER_REFLECT101)
                _, _, weights = face.detectMultiScale3(
                    tilted, scaleFactor=1.1, minNeighbors=neighbours, minSize=(min_side, min_side), outputRejectLevels=True
                )
                if len(weights) and float(np.max(weights)) >= min_weight:
                    return True
        if self._hog is not None:
            img = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
            up = min(2.0, _HOG_MIN_SIDE / min(img.shape[:2]))
            if up > 1:
                img = cv2.resize(img, None, fx=up, fy=up, interpolation=cv2.INTER_LINEAR)
            # Pixel-level noise produces strong spurious gradients; real footage is smooth at this scale.
            img = cv2.GaussianBlur(img, (0, 0), 1.0)
            _, weights = self._hog.detectMultiScale(img, winStride=(8, 8), padding=(16, 16), scale=1.05)
            if len(weights) and float(np.max(weights)) >= _HOG_MIN_WEIGHT:
                return True
        return False
