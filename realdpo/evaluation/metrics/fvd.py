"""fvd: the Fréchet distance between I3D features of a method's videos and of the --real clips (`evaluation.fvd`);
a distance between two sets, so no per-video score, interval or paired difference."""

from __future__ import annotations

import numpy as np

from realdpo.evaluation.metrics.base import Context, Metric


class FvdMetric(Metric):
    columns = {"fvd": False}

    def __init__(self) -> None:
        self.detector = None
        self.real_feats: list[np.ndarray] = []
        self.gen_feats: dict[str, list[np.ndarray]] = {}

    def prepare(self, ctx: Context) -> str | None:
        self.ctx = ctx
        if ctx.cfg.i3d is None:
            return "no --i3d given"
        if not ctx.real:
            return "no --real clips given"
        from realdpo.evaluation.fvd import load_i3d

        self.detector = load_i3d(ctx.cfg.i3d, trust=ctx.cfg.trust_i3d)
        return None

    def job_options(self) -> dict:
        return {"fvd": True}

    def reference_jobs(self) -> list:
        from realdpo.evaluation.scoring import Job

        cfg = self.ctx.cfg
        return [Job("", i, c.name, c.data, cfg.flow_side, cfg.sample_fps, motion=False, fvd=True)
                for i, c in enumerate(self.ctx.real)]

    def score(self, result) -> None:
        if result.fvd_clip is None:
            return
        from realdpo.evaluation.fvd import i3d_features

        features = i3d_features(self.detector, [result.fvd_clip])[0]
        (self.gen_feats.setdefault(result.method, []) if result.method else self.real_feats).append(features)

    def aggregate(self, method: str, results: list) -> dict | str:
        from realdpo.evaluation.frechet import frechet_from_features

        gen, real = self.gen_feats.get(method, []), self.real_feats
        if len(gen) < 2 or len(real) < 2:
            return f"needs at least 2 generated and 2 real clips of >= 16 frames (have {len(gen)} and {len(real)})"
        return {"fvd": frechet_from_features(np.stack(gen), np.stack(real))}

    def describe(self) -> dict:
        cfg = self.ctx.cfg
        return {"fvd": {"i3d": str(cfg.i3d) if cfg.i3d else None, "n_real": len(self.real_feats),
                        "real_sources": len(self.ctx.real), "frames": 16, "size": 224,
                        "definition": "Fréchet distance of I3D logits (first 16 frames, shorter side 224 + centre "
                                      "crop, [-1, 1]) between generated and real clips"}}
