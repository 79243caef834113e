"""clipsim: mean cosine between each frame's CLIP image embedding and the prompt's text embedding, x 100
(`evaluation.clipsim`); the workers pick the frames, the main process embeds them."""

from __future__ import annotations

from realdpo.evaluation.metrics.base import Column, Context, Metric


class ClipSimMetric(Metric):
    per_video = {"clipsim": Column("clipsim")}
    columns = {"clipsim": True}

    def __init__(self) -> None:
        self.model = None
        self.text: dict = {}  # prompt -> text embedding

    def prepare(self, ctx: Context) -> str | None:
        self.ctx = ctx
        if ctx.cfg.clip_checkpoint is None:
            return "no --clip-checkpoint given"
        if not all(p for ps in ctx.prompts.values() for p in ps):
            return "some videos have no prompt (give --prompts or a <stem>.txt beside each video)"
        from realdpo.evaluation.clipsim import ClipScorer

        self.model = ClipScorer.load(ctx.cfg.clip_arch, ctx.cfg.clip_checkpoint)
        return None

    def job_options(self) -> dict:
        return {"clip_frames": self.ctx.cfg.clip_frames}

    def score(self, result) -> None:
        if result.clip_images is None:
            return
        prompt = self.ctx.prompts[result.method][result.index]
        if prompt not in self.text:
            self.text[prompt] = self.model.text_embedding(prompt)
        result.scores["clipsim"] = self.model.score(result.clip_images, self.text[prompt])

    def describe(self) -> dict:
        cfg = self.ctx.cfg
        return {"clipsim": {"arch": cfg.clip_arch, "checkpoint": str(cfg.clip_checkpoint) if cfg.clip_checkpoint else None,
                            "frames": "every frame" if cfg.clip_frames == 0 else cfg.clip_frames,
                            "definition": "mean cosine(image embedding of frame, text embedding of prompt) x 100"}}
