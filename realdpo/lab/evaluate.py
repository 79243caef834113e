"""Evaluating a model in the motion lab (bench/motion_lab.py, `realdpo lab check` and `realdpo demo`): the held-out
prompts, sampling a model on them at fixed seeds, scoring the videos with the lab's metric, and the strip of frames.
The lab sits above the library's evaluation and uses its generic pieces (motion scores, strips)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from realbase.errors import UserError
from realdpo.evaluation.motion import motion_scores
from realdpo.evaluation.plots import write_strip
from realdpo.evaluation.scoring import strip_of
from realdpo.lab.sets import set_clip
from realdpo.lab.tracker import CHECKS, VideoScore, score_video
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
                    strength: float = 1.0, sampler: str = "default") -> np.ndarray:
    """One video per prompt from `spec` (with whatever LoRA is loaded into it): uint8 [N, F, H, W, 3].
    `init_latents` [N, ...] with `strength` < 1: start from those clean latents noised part-way (SDEdit, as in
    `ModelSpec.generate_latents`); `sampler` as there ("default" or "multistep")."""
    out = []
    for i in range(0, len(prompts.captions), batch_size):
        caps = prompts.captions[i:i + batch_size]
        cond = spec.encode_prompts(caps)
        latents = spec.generate_latents(caps, cond, num_frames=FRAMES, height=SIZE, width=SIZE, steps=steps,
                                        guidance=guidance, seeds=prompts.seeds[i:i + batch_size],
                                        images=prompts.images[i:i + batch_size], strength=strength,
                                        init_latents=None if init_latents is None else init_latents[i:i + batch_size],
                                        sampler=sampler)
        video = spec.decode_latents(latents)
        if not torch.isfinite(video).all():
            raise UserError(f"the model sampled non-finite values for held-out prompts {i}-{i + len(caps) - 1}")
        out += [to_uint8(v) for v in video]
        if progress is not None:
            progress(len(caps))
    return np.stack(out)


def _spread(values: list[float]) -> dict | None:
    """Median and 10th / 90th percentiles (the pass rates swing on tolerances, so the distributions are reported)."""
    if not values:
        return None
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"p10": float(p10), "median": float(p50), "p90": float(p90)}


def summarize(scores: Sequence[VideoScore]) -> dict:
    """Rates (%) over tracker scores: physical, render pass, and physical among the videos that render."""
    rendered = [s for s in scores if s.render_pass]
    return {
        "n_videos": len(scores),
        "physical_rate": 100.0 * float(np.mean([s.physical for s in scores])),
        "render_pass": 100.0 * float(np.mean([s.render_pass for s in scores])),
        "physical_among_rendered": 100.0 * float(np.mean([s.physical for s in rendered])) if rendered else None,
        "size_ratio": _spread([s.size_ratio for s in scores if s.size_ratio is not None]),
        "color_drift": _spread([s.color_drift for s in scores if s.color_drift is not None]),
        "residual_px": _spread([s.residual for s in scores if s.residual is not None]),
        "failed": {c: 100.0 * float(np.mean([c in s.failed for s in scores])) for c in CHECKS},
    }


def score_videos(videos: Sequence[np.ndarray]) -> dict:
    """The lab's metrics over videos (uint8 [F, H, W, 3] each): `summarize`'s rates and distributions, the mean
    residual (px, over the videos the tracker could follow), the graded consistent frames and balls found (%, mean
    over all videos), dynamic degree (%), motion smoothness, and the per-video physical and render-pass flags."""
    scores = [score_video(v) for v in videos]
    motion = [motion_scores(v, FPS, FPS) for v in videos]
    resid = [s.residual for s in scores if s.residual is not None]
    dyn = [m.dynamic for m in motion if m.dynamic is not None]
    smooth = [m.motion_smoothness for m in motion if m.motion_smoothness is not None]
    return {
        **summarize(scores),
        "residual": float(np.mean(resid)) if resid else None,
        "tracked": len(resid),
        "consistent_frames": 100.0 * float(np.mean([s.consistent_frames for s in scores])),
        "balls_found": 100.0 * float(np.mean([s.balls_found for s in scores])),
        "dynamic_degree": 100.0 * float(np.mean(dyn)) if dyn else None,
        "motion_smoothness": float(np.mean(smooth)) if smooth else None,
        # per video, in prompt order: what bootstrap intervals and paired differences are computed from
        "per_video": {"physical": [bool(s.physical) for s in scores], "render_pass": [bool(s.render_pass) for s in scores]},
    }


def write_strip_png(rows: dict[str, np.ndarray], path: Path, frames: int = 9) -> Path:
    """One labelled row of `frames` evenly spaced frames per video (uint8 [F, H, W, 3]), e.g. base vs RealDPO."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_strip([(name, strip_of(v, n=frames, height=96)) for name, v in rows.items()], path)
    return path


def check(cfg) -> dict:
    """`realdpo lab check`: sample a lab model (the committed one by default) on `cfg.prompts` held-out prompts drawn
    with `cfg.seed`, at the experiment's sampler (`SAMPLE_STEPS`, `SAMPLE_GUIDANCE`), and print the lab's rates and
    distributions; the last line is `lab: render_pass=<r> physical=<p> prompts=<n>`. Builds and trains nothing."""
    import time

    from rich.console import Console

    from realdpo.lab.model import SAMPLE_GUIDANCE, SAMPLE_STEPS, lab_model_path
    from realdpo.models import load_spec
    from realdpo.models.common import quiet_progress
    from realdpo.runtime import step_progress

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    console = Console(highlight=False, soft_wrap=True)
    model = Path(cfg.model) if cfg.model is not None else lab_model_path()
    t0 = time.perf_counter()
    with quiet_progress():
        spec = load_spec(model)
    prompts = heldout_prompts(cfg.prompts, cfg.seed)
    with step_progress() as bar:
        task = bar.add_task("sample", total=cfg.prompts, info="held-out prompts")
        with quiet_progress():
            videos = generate_videos(spec, prompts, steps=SAMPLE_STEPS, guidance=SAMPLE_GUIDANCE,
                                     batch_size=cfg.batch_size, progress=lambda n: bar.update(task, advance=n))
    summary = summarize([score_video(v) for v in videos])

    def spread(name: str, unit: str) -> str:
        d = summary[name]
        return f"{name} median {d['median']:.3f}{unit} (p10 {d['p10']:.3f}, p90 {d['p90']:.3f})" if d else f"{name}: -"

    among = summary["physical_among_rendered"]
    console.print(f"model {model}; {cfg.prompts} held-out prompts (seed {cfg.seed}), DDIM {SAMPLE_STEPS} steps, "
                  f"guidance {SAMPLE_GUIDANCE}; {time.perf_counter() - t0:.1f} s", markup=False)
    console.print("failed checks (% of videos): " + ", ".join(f"{c} {v:.1f}" for c, v in summary["failed"].items()),
                  markup=False)
    console.print("; ".join([spread("size_ratio", ""), spread("color_drift", ""), spread("residual_px", " px")]),
                  markup=False)
    console.print(f"physical among videos that render: {'-' if among is None else f'{among:.1f} %'}", markup=False)
    console.print(f"lab: render_pass={summary['render_pass']:.1f} physical={summary['physical_rate']:.1f} "
                  f"prompts={cfg.prompts}", markup=False)
    return summary
