"""Motion scores from dense optical flow: camera motion (a global similarity fit) apart from subject motion.

Flow runs between consecutive analysis frames (DIS, ultrafast preset). On a grid of flow samples a 4-dof similarity
transform (translation, rotation, scale) is fitted with RANSAC: that is the camera. What the camera does
not explain is the residual: things moving in the scene. Scores are in pixels per second at analysis size.
"""

from __future__ import annotations

import numpy as np

from realaction.options import FilterOptions

GRID_STEP = 8  # pixels between flow samples used for the camera fit
# DIS flow refuses frames under 12 pixels a side, and OpenCV 4.14's DIS *segfaults* on wide frames 12-24 pixels
# high (48x12, 128x16, 256x24: measured); from 32 pixels up every shape we tried (to 2048x32) is safe. Frames
# with a shorter side are stretched to it before the flow (scores of such extreme shapes are approximate).
MIN_FLOW_SIDE = 32
MIN_ANALYSIS_SIDE = 32  # smallest --analysis-side; an analysis frame is stretched to MIN_FLOW_SIDE if shorter
SUBJECT_PERCENTILE = 90  # the moving subject covers a fraction of the frame: use the upper tail of the residual


def _flow():
    import cv2

    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)


def pair_motion(prev: np.ndarray, nxt: np.ndarray, dis=None) -> tuple[float, float, float, np.ndarray]:
    """(camera, subject, subject_mean, camera_translation) displacement in pixels between two gray frames."""
    import cv2

    dis = dis or _flow()
    flow = dis.calc(prev, nxt, None)
    h, w = prev.shape
    ys, xs = np.mgrid[GRID_STEP // 2:h:GRID_STEP, GRID_STEP // 2:w:GRID_STEP]
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    disp = flow[ys.ravel(), xs.ravel()]
    model = None
    if len(pts) >= 3:
        model, _ = cv2.estimateAffinePartial2D(pts, pts + disp, method=cv2.RANSAC, ransacReprojThreshold=1.0,
                                               maxIters=500, confidence=0.98)
    if model is None:
        model = np.array([[1, 0, 0], [0, 1, 0]], np.float64)
    cam = pts @ model[:, :2].T + model[:, 2] - pts
    residual = np.linalg.norm(disp - cam, axis=1)
    camera = float(np.linalg.norm(cam, axis=1).mean())
    return camera, float(np.percentile(residual, SUBJECT_PERCENTILE)), float(residual.mean()), model[:, 2].copy()


def motion_scores(gray: np.ndarray, times: np.ndarray) -> dict[str, float]:
    """camera_motion, subject_motion (90th percentile of the residual), subject_motion_mean, camera_jitter
    (mean change of the camera's velocity between pairs), all per second."""
    if len(gray) < 2:
        return {"camera_motion": 0.0, "subject_motion": 0.0, "subject_motion_mean": 0.0, "camera_jitter": 0.0}
    h, w = gray.shape[1:3]
    if min(h, w) < MIN_FLOW_SIDE:  # never hand DIS a shape that crashes it
        import cv2

        size = (max(w, MIN_FLOW_SIDE), max(h, MIN_FLOW_SIDE))
        gray = np.stack([cv2.resize(np.ascontiguousarray(g), size, interpolation=cv2.INTER_LINEAR) for g in gray])
    dis = _flow()
    cams, subs, means, vel = [], [], [], []
    for i in range(len(gray) - 1):
        dt = max(float(times[i + 1] - times[i]), 1e-6)
        camera, subject, mean, trans = pair_motion(gray[i], gray[i + 1], dis)
        cams.append(camera / dt)
        subs.append(subject / dt)
        means.append(mean / dt)
        vel.append(trans / dt)
    jitter = float(np.mean([np.linalg.norm(b - a) for a, b in zip(vel, vel[1:])])) if len(vel) > 1 else 0.0
    return {
        "camera_motion": float(np.mean(cams)),
        "subject_motion": float(np.mean(subs)),
        "subject_motion_mean": float(np.mean(means)),
        "camera_jitter": jitter,
    }


def motion_reasons(scores: dict[str, float], cfg: FilterOptions) -> list[str]:
    reasons = []
    if scores["subject_motion"] < cfg.min_motion:
        reasons.append("static")
    if scores["camera_motion"] > cfg.max_camera_motion:
        reasons.append("shaky")
    return reasons
