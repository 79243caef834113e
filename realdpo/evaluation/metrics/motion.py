"""dynamic_degree, motion_smoothness and flicker: optical-flow motion scores of each video (`evaluation.motion`),
computed in the worker processes."""

from __future__ import annotations

from realdpo.evaluation import motion
from realdpo.evaluation.metrics.base import Column, Context, Metric


class MotionMetric(Metric):
    per_video = {"dynamic_degree": Column("dynamic", 100.0), "motion_smoothness": Column("motion_smoothness"),
                 "flicker": Column("flicker", higher_is_better=False)}
    columns = {name: c.higher_is_better for name, c in per_video.items()}

    def prepare(self, ctx: Context) -> None:
        self.cfg = ctx.cfg

    def job_options(self) -> dict:
        return {"motion": True}

    def describe(self) -> dict:
        return {
            "flow": motion.FLOW_ALGORITHM,
            "flow_short_side": self.cfg.flow_side,
            "sample_fps": self.cfg.sample_fps,
            "dynamic_rule": "a sampled pair moves when the mean of its top 5% flow magnitudes exceeds "
                            "6.0 * min(H, W) / 256 * max(1, sample_fps / fps) at the working resolution H x W; "
                            "a video is dynamic when round(4 * n_sampled / 16) pairs move",
            "motion_smoothness": "odd frames dropped and rebuilt by bidirectional-flow interpolation of their "
                                 "neighbours; (255 - MAE) / 255 * 100 on uint8 RGB at the working resolution",
            "flicker": "mean |frame_t - warp(frame_t+1, flow t->t+1)| in uint8 gray levels, RGB, working resolution; "
                       "lower is better",
        }
