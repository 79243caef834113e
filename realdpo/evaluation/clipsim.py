"""clipsim: mean cosine similarity between each frame's open_clip image embedding and the prompt's text embedding,
x100. The model is `realbase.clip_model.ClipModel` (local checkpoint, safetensors or weights-only torch files);
frames go through that model's own open_clip preprocessing (resize + centre crop to its input size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class ClipScorer:
    def __init__(self, model):
        self.model = model

    @classmethod
    def load(cls, arch: str, checkpoint: Path | str) -> "ClipScorer":
        from realbase.clip_model import ClipModel

        return cls(ClipModel.load(arch, checkpoint))

    def text_embedding(self, prompt: str) -> torch.Tensor:
        return self.model.text_embeddings([prompt])[0]

    def score(self, frames: np.ndarray, text_emb: torch.Tensor) -> float:
        """Mean over frames (uint8 RGB [T, H, W, 3]) of cos(image, text), x100."""
        img = self.model.image_embeddings(frames)
        return float((img @ text_emb).mean()) * 100.0
