"""The motion lab's world: one coloured ball on a plain background, moved by exact physics, rendered
deterministically.

A clip is 9 frames of 32x32 RGB at 8 fps (`FRAMES`, `SIZE`, `FPS`), sized so a 2-core CPU can learn to render it.
It holds one ball of radius 4-5 px in one of three colours far apart in RGB (`PALETTE`: red, blue, white). The ball
either **glides** (constant velocity, speed 1-2 px/frame) or **falls** (constant acceleration `GRAVITY` px/frame^2
downwards, horizontal speed 1-2 px/frame, so it always moves at least 1 px per frame except across a bounce); all
four walls are elastic: the centre stays in [r, 32 - r] on both axes and the velocity flips on contact (the bounce
instant is solved exactly, not stepped).

Unreal clips (`UNREAL_KINDS`) start as a physical clip and break the ball's **motion only** at an event frame: a
teleport (8-14 px), jitter (Gaussian, sigma 1-2 px per axis from frame 1 on), or a stall (the ball stops for 2-4
frames, then resumes its path). Its size, colour and count never change, so a model trained on the web mix learns
to render the ball and only its motion can go wrong. Captions describe the underlying physical motion only, as web
captions would.

`render_clip(seed, kind)` is a pure function of its arguments: the same seed gives the same pixels on any machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

SIZE = 32
FRAMES = 9
FPS = 8.0
GRAVITY = 0.2  # px / frame^2, image y grows downwards
BACKGROUND = (46, 50, 58)
PALETTE = {  # pairwise RGB distance >= 200, and every colour >= 190 from the background
    "red": (220, 50, 47),
    "blue": (60, 110, 235),
    "white": (235, 235, 235),
}
COLOR_NAMES = tuple(PALETTE)
RADIUS_RANGE = (4.0, 5.0)
GLIDE_SPEED = (1.0, 2.0)
FALL_VX = (1.0, 2.0)
FALL_VY = (-2.0, 0.5)
MIN_GAP = 3.0  # px between the edges of two balls, at every frame (scenes built with n_balls=2 only)
TELEPORT_JUMP = (8.0, 14.0)  # px
JITTER_SIGMA = (1.0, 2.0)  # px per axis
STALL_FRAMES = (2, 4)  # frames the ball stands still
EVENT_FRAMES = (2, 6)  # an unreal clip's event frame, inclusive
UNREAL_KINDS = ("teleport", "jitter", "stall")
KINDS = ("physical", *UNREAL_KINDS)


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (names and numbers): the lab's sets draw every clip's seed this way."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ---------------------------------------------------------------------------------------------- exact physics

def _hit_time(p: np.ndarray, v: np.ndarray, a: float, wall: np.ndarray) -> np.ndarray:
    """Smallest tau > 0 with p + v tau + a tau^2 / 2 = wall (inf where none), elementwise."""
    eps = 1e-9
    if a == 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            tau = (wall - p) / v
        return np.where(np.isfinite(tau) & (tau > eps), tau, np.inf)
    disc = v * v + 2 * a * (wall - p)
    ok = disc >= 0
    sq = np.sqrt(np.where(ok, disc, 0.0))
    r1, r2 = (-v - sq) / a, (-v + sq) / a
    lo, hi = np.minimum(r1, r2), np.maximum(r1, r2)
    tau = np.where(lo > eps, lo, np.where(hi > eps, hi, np.inf))
    return np.where(ok, tau, np.inf)


def simulate_axis(p0, v0, a: float, lo, hi, frames: int) -> np.ndarray:
    """Positions at frames 0..frames-1 of a point starting at p0 with velocity v0 and acceleration a between
    elastic walls lo and hi. Vectorised: p0, v0, lo, hi broadcast to a batch shape S; returns [*S, frames]."""
    p0, v0, lo, hi = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (p0, v0, lo, hi)))
    p = np.clip(p0, lo, hi).copy()
    v = v0.copy()
    if a == 0:  # constant velocity: a triangle wave of period 2 (hi - lo), in closed form
        span = hi - lo
        u = np.mod(p[..., None] - lo[..., None] + v[..., None] * np.arange(frames), 2 * span[..., None])
        return lo[..., None] + np.where(u <= span[..., None], u, 2 * span[..., None] - u)
    out = np.empty(p.shape + (frames,))
    out[..., 0] = p
    for f in range(1, frames):
        left = np.ones_like(p)  # time left in this frame step
        for _ in range(16):  # at most a few bounces per frame at the world's speeds
            t_lo = _hit_time(p, v, a, lo)
            t_hi = _hit_time(p, v, a, hi)
            t_hit = np.minimum(t_lo, t_hi)
            hit = t_hit < left
            tau = np.where(hit, t_hit, left)
            p = p + v * tau + 0.5 * a * tau * tau
            v = v + a * tau
            p = np.where(hit, np.where(t_lo <= t_hi, lo, hi), p)
            v = np.where(hit, -v, v)
            left = left - tau
            if not hit.any():
                break
        out[..., f] = np.clip(p, lo, hi)
    return out


def simulate(p0: tuple[float, float], v0: tuple[float, float], radius: float, gravity: bool,
             frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """Centre positions [frames, 2] (x, y) of a ball of `radius` in the size x size box."""
    x = simulate_axis(p0[0], v0[0], 0.0, radius, size - radius, frames)
    y = simulate_axis(p0[1], v0[1], GRAVITY if gravity else 0.0, radius, size - radius, frames)
    return np.stack([x, y], axis=-1)


# ---------------------------------------------------------------------------------------------- clips

@dataclass
class Ball:
    color: str
    radius: float
    p0: tuple[float, float]
    v0: tuple[float, float]
    phrase: str = ""


@dataclass
class Clip:
    """One rendered clip and its ground truth: every ball's centre, radius, colour and visibility per frame."""

    seed: int
    kind: str
    gravity: bool
    caption: str
    frames: np.ndarray  # uint8 [F, H, W, 3]
    centers: np.ndarray  # float [F, n, 2] (x, y) in pixels, pixel centres at i + 0.5
    radii: np.ndarray  # float [F, n]
    colors: list[list[str]]  # [F][n] palette names
    visible: np.ndarray  # bool [F, n]
    balls: list[Ball] = field(default_factory=list)
    event_frame: int | None = None  # the frame an unreal clip breaks physics at


def _direction(vx: float, vy: float) -> str:
    ang = np.degrees(np.arctan2(-vy, vx)) % 360  # 0 = right, 90 = up
    names = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")
    return names[int(((ang + 22.5) % 360) // 45)]


def _phrase(ball: Ball, path: np.ndarray, gravity: bool) -> str:
    """e.g. "a red ball moves up-left and bounces", "a blue ball is thrown up-right", "a white ball falls left"."""
    lo, hi = ball.radius, SIZE - ball.radius
    bounced = (np.isclose(path, lo, atol=1e-6) | np.isclose(path, hi, atol=1e-6)).any()
    name = f"a {ball.color} ball"
    vx, vy = ball.v0
    if not gravity:
        text = f"{name} moves {_direction(vx, vy)}"
    elif vy < -0.75:
        text = f"{name} is thrown up-{'right' if vx > 0 else 'left'}"
    else:
        text = f"{name} falls {'right' if vx > 0 else 'left'}"
    return text + (" and bounces" if bounced else "")


def _draw(frames: np.ndarray, centers: np.ndarray, radii: np.ndarray, colors, visible: np.ndarray) -> None:
    """Anti-aliased discs: pixel coverage = clip(r + 0.5 - distance to the pixel centre, 0, 1)."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    for f in range(frames.shape[0]):
        img = frames[f].astype(np.float32)
        for j in range(centers.shape[1]):
            if not visible[f, j]:
                continue
            cx, cy = centers[f, j]
            d = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
            cov = np.clip(radii[f, j] + 0.5 - d, 0.0, 1.0)[..., None]
            img = img * (1 - cov) + np.asarray(PALETTE[colors[f][j]], np.float32) * cov
        frames[f] = np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _sample_ball(rng: np.random.Generator, gravity: bool, colors_used: set[str]) -> Ball:
    color = str(rng.choice([c for c in COLOR_NAMES if c not in colors_used]))
    r = float(rng.uniform(*RADIUS_RANGE))
    p0 = (float(rng.uniform(r, SIZE - r)), float(rng.uniform(r, SIZE - r)))
    if gravity:
        vx = float(rng.uniform(*FALL_VX)) * (1 if rng.random() < 0.5 else -1)
        v0 = (vx, float(rng.uniform(*FALL_VY)))
    else:
        speed, ang = float(rng.uniform(*GLIDE_SPEED)), float(rng.uniform(0, 2 * np.pi))
        v0 = (speed * np.cos(ang), speed * np.sin(ang))
    return Ball(color, r, p0, v0)


def _physical_scene(rng: np.random.Generator, n_balls: int, gravity: bool) -> tuple[list[Ball], np.ndarray]:
    for _ in range(200):
        balls: list[Ball] = []
        for _ in range(n_balls):
            balls.append(_sample_ball(rng, gravity, {b.color for b in balls}))
        paths = np.stack([simulate(b.p0, b.v0, b.radius, gravity) for b in balls], axis=1)  # [F, n, 2]
        if n_balls == 1:
            return balls, paths
        gap = np.linalg.norm(paths[:, 0] - paths[:, 1], axis=-1) - balls[0].radius - balls[1].radius
        if gap.min() >= MIN_GAP:
            return balls, paths
    raise RuntimeError("could not place non-overlapping balls")  # never at the world's sizes


def render_clip(seed: int, kind: str = "physical", n_balls: int | None = None,
                gravity: bool | None = None) -> Clip:
    """Render one clip of `kind` ("physical" or one of UNREAL_KINDS), a pure function of the arguments.
    The world's clips hold one ball (n_balls=2 is for tests of the tracker); gravity defaults to a draw from the
    seed (p = 0.5)."""
    if kind not in KINDS:
        raise ValueError(f"unknown clip kind {kind!r}; choose one of {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    n = n_balls if n_balls is not None else 1
    g = gravity if gravity is not None else bool(rng.random() < 0.5)
    balls, paths = _physical_scene(rng, n, g)
    for b, path in zip(balls, np.moveaxis(paths, 1, 0)):
        b.phrase = _phrase(b, path, g)
    caption = " and ".join(b.phrase for b in balls)

    centers = paths.copy()
    radii = np.tile(np.array([b.radius for b in balls]), (FRAMES, 1))
    colors = [[b.color for b in balls] for _ in range(FRAMES)]
    visible = np.ones((FRAMES, n), bool)
    event = None
    if kind != "physical":
        event = int(rng.integers(EVENT_FRAMES[0], EVENT_FRAMES[1] + 1))
        j = int(rng.integers(0, n))
        b = balls[j]
        lo, hi = b.radius, SIZE - b.radius
        if kind == "teleport":
            for _ in range(100):
                length, angle = rng.uniform(*TELEPORT_JUMP), rng.uniform(0, 2 * np.pi)
                new = centers[event, j] + length * np.array([np.cos(angle), np.sin(angle)])
                if (new >= lo).all() and (new <= hi).all():
                    break
            else:
                new = np.clip(new, lo, hi)
            v = (centers[event, j] - centers[event - 1, j]).tolist()  # keep moving as before the jump
            centers[event:, j] = simulate(tuple(new), tuple(v), b.radius, g, FRAMES - event)
        elif kind == "jitter":
            sigma = rng.uniform(*JITTER_SIGMA)
            centers[1:, j] = np.clip(centers[1:, j] + rng.normal(0, sigma, centers[1:, j].shape), lo, hi)
        elif kind == "stall":
            hold = int(rng.integers(STALL_FRAMES[0], STALL_FRAMES[1] + 1))
            t = np.arange(FRAMES)
            clock = np.where(t <= event, t, np.where(t <= event + hold, event, t - hold))
            centers[:, j] = paths[clock, j]

    frames = np.empty((FRAMES, SIZE, SIZE, 3), np.uint8)
    frames[:] = np.asarray(BACKGROUND, np.uint8)
    _draw(frames, centers, radii, colors, visible)
    return Clip(seed=seed, kind=kind, gravity=g, caption=caption, frames=frames, centers=centers, radii=radii,
                colors=colors, visible=visible, balls=balls, event_frame=event)
