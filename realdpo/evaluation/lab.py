"""Evaluating a model in the motion lab (bench/motion_lab.py and `realdpo demo`): the held-out prompts, sampling a
model on them at fixed seeds, scoring the videos with the lab's metric, and the strip of frames."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from realdpo.evaluation.motion import motion_scores
from realdpo.evaluation.plots import write_strip
from realdpo.evaluation.scoring import strip_of
from realdpo.lab.sets import set_clip
from realdpo.lab.tracker import CHECKS, score_video
from realdpo.lab.world import FPS, FRAMES, SIZE
from realdpo.models.frames import to_uint8

HELDOUT_SEED_BASE = 1000  # sampler seed of held-out prompt i: HELDOUT_SEED_BASE + i


@dataclass
class Prompts:
    captions: list[str]
    images: torch.Tensor  # first frames [N, 3, H, W] in [-1, 1]
    seeds: list[int]


def heldout_prompts(count: int, seed: int = 0) -> Prompts:
    """Captions and first frames of held-out clips 0..count-1, with their fixed sampler seeds."""
    clips = [set_clip("heldout", i, seed) for i in range(count)]
    images = torch.from_numpy(np.stack([c.frames[0] for c in clips])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return Prompts([c.caption for c in clips], images, [HELDOUT_SEED_BASE + i for i in range(count)])


def generate_videos(spec, prompts: Prompts, *, steps: int, guidance: float, batch_size: int = 16,
                    progress: Callable[[int], None] | None = None, init_latents: torch.Tensor | None = None,
                    strength: float = 1.0) -> np.ndarray:
    """One video per prompt from `spec` (with whatever LoRA is loaded into it): uint8 [N, F, H, W, 3].
    `init_latents` [N, ...] with `strength` < 1: start from those clean latents noised part-way (SDEdit, as in
    `ModelSpec.generate_latents`)."""
    out = []
    for i in range(0, len(prompts.captions), batch_size):
        caps = prompts.captions[i:i + batch_size]
        cond = spec.encode_prompts(caps)
        latents = spec.generate_latents(caps, cond, num_frames=FRAMES, height=SIZE, width=SIZE, steps=steps,
                                        guidance=guidance, seeds=prompts.seeds[i:i + batch_size],
                                        images=prompts.images[i:i + batch_size], strength=strength,
                                        init_latents=None if init_latents is None else init_latents[i:i + batch_size])
        out += [to_uint8(v) for v in spec.decode_latents(latents)]
        if progress is not None:
            progress(len(caps))
    return np.stack(out)


def score_videos(videos: Sequence[np.ndarray]) -> dict:
    """The lab's metrics over videos (uint8 [F, H, W, 3] each): physical rate (%), mean residual (px, over the
    videos the tracker could follow), the graded consistent frames and balls found (%, mean over all videos),
    dynamic degree (%) and motion smoothness, and how often each check failed (%)."""
    scores = [score_video(v) for v in videos]
    motion = [motion_scores(v, FPS, FPS) for v in videos]
    resid = [s.residual for s in scores if s.residual is not None]
    dyn = [m.dynamic for m in motion if m.dynamic is not None]
    smooth = [m.motion_smoothness for m in motion if m.motion_smoothness is not None]
    return {
        "n_videos": len(scores),
        "physical_rate": 100.0 * float(np.mean([s.physical for s in scores])),
        "residual": float(np.mean(resid)) if resid else None,
        "tracked": len(resid),
        "consistent_frames": 100.0 * float(np.mean([s.consistent_frames for s in scores])),
        "balls_found": 100.0 * float(np.mean([s.balls_found for s in scores])),
        "dynamic_degree": 100.0 * float(np.mean(dyn)) if dyn else None,
        "motion_smoothness": float(np.mean(smooth)) if smooth else None,
        "failed": {c: 100.0 * float(np.mean([c in s.failed for s in scores])) for c in CHECKS},
    }


def write_strip_png(rows: dict[str, np.ndarray], path: Path, frames: int = 9) -> Path:
    """One labelled row of `frames` evenly spaced frames per video (uint8 [F, H, W, 3]), e.g. base vs RealDPO."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_strip([(name, strip_of(v, n=frames, height=96)) for name, v in rows.items()], path)
    return path
