"""The lab's metric: find the balls in every frame of a video and score their motion against the world's physics.

Tracking (per frame, uint8 RGB [H, W, 3]): the background is the frame's per-channel median (a ball covers under
10 % of the frame); a pixel's contrast is its RGB distance to it. Pixels with contrast > `CORE_CONTRAST` form
blobs (8-connected); each blob, grown by `GROW` px, gets a soft coverage `clip(contrast / c, 0, 1)` where `c` is its
90th-percentile contrast, so a blurred or anti-aliased edge counts fractionally. A blob's area is its summed
coverage (kept when >= `MIN_AREA` px), its centre the coverage-weighted mean (x, y), its radius sqrt(area / pi),
its colour the mean RGB of its fully covered pixels, named by the nearest palette colour.

Scoring (per video) runs in two passes (`TOLERANCES`, validated in tests/test_realdpo/lab/test_lab_tracker.py on
rendered clips after the H.264 round trip the real set takes). The objects are the blobs of frame 0; each later
frame must hold blobs of exactly the same palette colours.

**Render pass** (`RENDER_CHECKS`: did the model draw the world's object at all?)

- `no-object`: frame 0 holds at least one ball;
- `count`: every frame holds as many balls as frame 0 (nothing appears or vanishes);
- `color`: each ball keeps its palette colour and stays within `COLOR_TOL` (RGB distance) of its frame-0 colour;
- `size`: each ball's largest radius is at most `SIZE_TOL` x its smallest.

**Motion checks** (`MOTION_CHECKS`: does the drawn ball move as the world's physics says? Run on every video the
tracker can follow, so a video that fails the render pass still reports its motion numbers):

- `stall`: no ball moves less than `STALL_STEP` px per frame for 2 or more consecutive frames (every ball in this
  world moves at least 1 px per frame, except across one frame at a bounce), which also fails frozen balls;
- `teleport`: no single frame step differs from the best physical fit's step by more than `TELEPORT_STEP` px;
- `residual`: the best physical fit (free start position and velocity per ball, under either of the world's two
  laws: constant velocity, or gravity `GRAVITY`; elastic walls at the ball's measured radius) leaves an RMS
  error <= `RESIDUAL_RMS` px and a largest error <= `RESIDUAL_MAX` px.

A video is **physical** when it passes the render pass and every motion check.

Two graded scores sit beside the checks, for videos far from physical: `consistent_frames`, the share of frames
after frame 0 that hold exactly frame 0's balls (as many blobs, of the same palette colours), and `balls_found`,
the share of (frame-0 ball, later frame) pairs where a blob of that ball's colour is found. Both are 0 for a video
whose frame 0 holds no ball.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from realdpo.evaluation.scoring import Column, FrameScorer
from realdpo.lab.world import GRAVITY, PALETTE, SIZE, simulate_axis

CORE_CONTRAST = 60.0
GROW = 2
MIN_AREA = 8.0
COLOR_TOL = 60.0
SIZE_TOL = 1.3
STALL_STEP = 0.4
TELEPORT_STEP = 5.0
RESIDUAL_RMS = 0.8
RESIDUAL_MAX = 2.0
TOLERANCES = dict(core_contrast=CORE_CONTRAST, min_area=MIN_AREA, color_tol=COLOR_TOL, size_tol=SIZE_TOL,
                  stall_step=STALL_STEP, teleport_step=TELEPORT_STEP, residual_rms=RESIDUAL_RMS,
                  residual_max=RESIDUAL_MAX)
RENDER_CHECKS = ("no-object", "count", "color", "size")
MOTION_CHECKS = ("stall", "teleport", "residual")
CHECKS = RENDER_CHECKS + MOTION_CHECKS

_PALETTE_NAMES = list(PALETTE)
_PALETTE_RGB = np.array([PALETTE[n] for n in _PALETTE_NAMES], np.float32)


@dataclass
class Blob:
    x: float
    y: float
    radius: float
    area: float
    rgb: tuple[float, float, float]
    color: str


def find_blobs(frame: np.ndarray) -> list[Blob]:
    """The balls of one uint8 RGB frame [H, W, 3], largest first."""
    img = frame.astype(np.float32)
    bg = np.median(img.reshape(-1, 3), axis=0)
    contrast = np.linalg.norm(img - bg, axis=-1)
    n, labels = cv2.connectedComponents((contrast > CORE_CONTRAST).astype(np.uint8), connectivity=8)
    if n <= 1:
        return []
    kernel = np.ones((2 * GROW + 1, 2 * GROW + 1), np.uint8)
    grown = [cv2.dilate((labels == i).astype(np.uint8), kernel).astype(bool) for i in range(1, n)]
    claimed = np.sum(grown, axis=0)
    ys, xs = np.mgrid[0:frame.shape[0], 0:frame.shape[1]].astype(np.float32) + 0.5
    blobs = []
    for i, region in enumerate(grown, start=1):
        region = region & (claimed == 1) | (labels == i)
        c = float(np.percentile(contrast[labels == i], 90))
        cov = np.clip(contrast / max(c, 1e-6), 0, 1) * region
        area = float(cov.sum())
        if area < MIN_AREA:
            continue
        full = cov >= 0.9
        rgb = img[full].mean(axis=0) if full.any() else img[labels == i].mean(axis=0)
        name = _PALETTE_NAMES[int(np.argmin(np.linalg.norm(_PALETTE_RGB - rgb, axis=1)))]
        blobs.append(Blob(float((cov * xs).sum() / area), float((cov * ys).sum() / area), float(np.sqrt(area / np.pi)),
                          area, tuple(float(v) for v in rgb), name))
    return sorted(blobs, key=lambda b: -b.area)


# ---------------------------------------------------------------------------------------------- physical fit

def _fit_axis(obs: np.ndarray, accel: float, lo: float, hi: float) -> np.ndarray:
    """The trajectory under (accel, walls lo/hi) closest in least squares to `obs` [F]: a 0.2-step grid over start
    position (+-1.5 px around obs[0]) and velocity (+-9 px/frame) picks 5 starts, each polished by damped Gauss-Newton
    (finite-difference Jacobian, all evaluations vectorised)."""
    frames = len(obs)

    def sse(p, v):
        return ((simulate_axis(p, v, accel, lo, hi, frames) - obs) ** 2).sum(-1)

    pp, vv = np.meshgrid(obs[0] + np.linspace(-1.5, 1.5, 16), np.linspace(-9, 9, 91), indexing="ij")
    grid = sse(pp, vv).ravel()
    top = np.argsort(grid)[:5]
    p, v, err = pp.flat[top].copy(), vv.flat[top].copy(), grid[top].copy()  # [5] starts, polished together
    h, scales = 1e-4, np.array([1.0, 0.5, 0.25, 0.125])
    for _ in range(20):
        sims = simulate_axis(p[:, None] + [0, h, 0], v[:, None] + [0, 0, h], accel, lo, hi, frames)  # [5, 3, F]
        jac = np.stack([sims[:, 1] - sims[:, 0], sims[:, 2] - sims[:, 0]], axis=-1) / h  # [5, F, 2]
        res = obs - sims[:, 0]
        jtj = jac.transpose(0, 2, 1) @ jac + 1e-9 * np.eye(2)
        step = np.linalg.solve(jtj, (jac.transpose(0, 2, 1) @ res[..., None]))[..., 0]  # [5, 2]
        trial = sse(p[:, None] + scales * step[:, :1], v[:, None] + scales * step[:, 1:])  # [5, 4]
        i = np.argmin(trial, axis=1)
        better = trial[np.arange(len(p)), i] < err - 1e-12
        if not better.any() or np.abs(step).max() < 1e-7:
            break
        p = np.where(better, p + scales[i] * step[:, 0], p)
        v = np.where(better, v + scales[i] * step[:, 1], v)
        err = np.where(better, trial[np.arange(len(p)), i], err)
    k = int(np.argmin(err))
    return simulate_axis(p[k], v[k], accel, lo, hi, frames)


def best_physical_fit(track: np.ndarray, radius: float, size: int = SIZE) -> tuple[np.ndarray, str]:
    """The world trajectory [F, 2] closest to an observed track [F, 2], and its law ("glide" or "fall")."""
    lo, hi = radius, size - radius
    fx = _fit_axis(track[:, 0], 0.0, lo, hi)
    best = None
    for law, accel in (("glide", 0.0), ("fall", GRAVITY)):
        fy = _fit_axis(track[:, 1], accel, lo, hi)
        err = ((fx - track[:, 0]) ** 2 + (fy - track[:, 1]) ** 2).sum()
        if best is None or err < best[0]:
            best = (err, np.stack([fx, fy], axis=-1), law)
    return best[1], best[2]


# ---------------------------------------------------------------------------------------------- scoring

@dataclass
class VideoScore:
    physical: bool  # render pass and every motion check
    render_pass: bool = False  # no RENDER_CHECKS failed
    failed: list[str] = field(default_factory=list)  # the checks that failed, in CHECKS order
    objects: int = 0
    consistent_frames: float = 0.0  # share of frames 1.. holding exactly frame 0's balls (count and colours)
    balls_found: float = 0.0  # share of (frame-0 ball, later frame) pairs whose colour is found
    residual: float | None = None  # RMS px of the best physical fit, worst ball (None when not tracked)
    residual_max: float | None = None
    size_ratio: float | None = None
    color_drift: float | None = None
    min_run_step: float | None = None  # smallest step of a 2-frame run (stall evidence)
    teleport: float | None = None  # largest step deviation from the fit
    laws: list[str] = field(default_factory=list)
    tracks: list[list[list[float]]] = field(default_factory=list, repr=False)  # [ball][frame] = [x, y]

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("tracks")
        return d


def score_video(frames: np.ndarray) -> VideoScore:
    """Track the balls of a video (uint8 RGB [F, H, W, 3]) and check their motion against the world's physics."""
    per_frame = [find_blobs(f) for f in frames]
    first = per_frame[0]
    if not first:
        return VideoScore(False, False, ["no-object"])
    names = [b.color for b in first]
    failed: set[str] = set()
    if len(set(names)) != len(names):
        failed.add("color")  # two balls of one colour never happen in the world
    tracks: dict[str, list[Blob]] = {n: [] for n in names}
    consistent = 0
    for blobs in per_frame:
        if len(blobs) != len(first):
            failed.add("count")
        seen = {}
        for b in blobs:
            seen.setdefault(b.color, b)
        if set(seen) != set(names):
            failed.add("color")
        consistent += len(blobs) == len(first) and set(seen) == set(names)
        for n in tracks:  # once per colour: a frame 0 holding two blobs of one colour must not count them twice
            if n in seen:
                tracks[n].append(seen[n])
    later = max(len(frames) - 1, 1)
    score = VideoScore(False, False, objects=len(first), consistent_frames=(consistent - 1) / later,
                       balls_found=(sum(len(t) for t in tracks.values()) - len(tracks)) / (later * len(tracks)))
    if len(tracks) != len(names) or any(len(t) != len(frames) for t in tracks.values()):
        # two balls of one colour in frame 0, or a colour went missing: "color" failed, and no ball can be followed
        score.failed = [c for c in CHECKS if c in failed]
        score.render_pass = not failed  # always False here: "color" failed
        return score

    resid, resid_max, ratios, drifts, runs, jumps = [], [], [], [], [], []
    for n in names:
        t = tracks[n]
        pos = np.array([[b.x, b.y] for b in t])
        radii = np.array([b.radius for b in t])
        rgb = np.array([b.rgb for b in t])
        ratios.append(float(radii.max() / radii.min()))
        drifts.append(float(np.linalg.norm(rgb - rgb[0], axis=1).max()))
        steps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
        runs.append(float(np.maximum(steps[:-1], steps[1:]).min()) if len(steps) > 1 else float("inf"))
        fit, law = best_physical_fit(pos, float(np.median(radii)))
        err = np.linalg.norm(fit - pos, axis=1)
        resid.append(float(np.sqrt((err ** 2).mean())))
        resid_max.append(float(err.max()))
        jumps.append(float(np.linalg.norm(np.diff(pos, axis=0) - np.diff(fit, axis=0), axis=1).max()))
        score.laws.append(law)
        score.tracks.append(pos.round(3).tolist())
    score.residual, score.residual_max = max(resid), max(resid_max)
    score.size_ratio, score.color_drift = max(ratios), max(drifts)
    score.min_run_step, score.teleport = min(runs), max(jumps)
    if score.color_drift > COLOR_TOL:
        failed.add("color")
    if score.size_ratio > SIZE_TOL:
        failed.add("size")
    if score.min_run_step < STALL_STEP:
        failed.add("stall")
    if score.teleport > TELEPORT_STEP:
        failed.add("teleport")
    if score.residual > RESIDUAL_RMS or score.residual_max > RESIDUAL_MAX:
        failed.add("residual")
    score.failed = [c for c in CHECKS if c in failed]
    score.render_pass = not any(c in failed for c in RENDER_CHECKS)
    score.physical = not failed
    return score


def score_lab_frames(frames: np.ndarray) -> dict:
    """`realdpo eval --lab` scores of one decoded video (resized to the world's size if it is not at it)."""
    if frames.shape[1:3] != (SIZE, SIZE):
        frames = np.stack([cv2.resize(f, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for f in frames])
    s = score_video(frames)
    return {"lab_physical": s.physical, "lab_render_pass": s.render_pass, "lab_failed": s.failed,
            "lab_residual": s.residual,
            "lab_consistent_frames": 100.0 * s.consistent_frames, "lab_balls_found": 100.0 * s.balls_found}


# `realdpo eval --lab`: the command line plugs this scorer into the library's evaluation.
LAB_SCORER = FrameScorer("lab", score_lab_frames, {
    "tolerances": TOLERANCES, "render_checks": list(RENDER_CHECKS), "motion_checks": list(MOTION_CHECKS),
    "definition": "physical_rate: percentage of videos whose tracked balls pass every check of realdpo.lab.tracker "
    "(render checks and motion checks); lab_render_pass: % passing the render checks; lab_residual: mean RMS px of "
    "the best physical fit (tracked videos); lab_consistent_frames: % of frames after frame 0 holding exactly frame "
    "0's balls; lab_balls_found: % of (frame-0 ball, later frame) pairs whose colour is found (means over videos)"},
    columns={"physical_rate": Column("lab_physical", 100.0), "lab_residual": Column("lab_residual", higher_is_better=False),
             "lab_consistent_frames": Column("lab_consistent_frames"), "lab_balls_found": Column("lab_balls_found")})
