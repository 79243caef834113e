"""A local open_clip model: image/text embeddings, a "person" score and zero-shot labels for video frames.

`ClipModel.load(arch, checkpoint)`:
- `arch`: an open_clip architecture name ("ViT-B-32"), or the path of an open_clip model-config JSON
  (registered with `open_clip.add_model_config`; the architecture's name is the file's stem).
- `checkpoint`: a local weights file (`.safetensors`, or a torch `.pt`/`.pth`/`.bin` state dict, optionally
  under "state_dict"), or a folder with `open_clip_config.json` and weights (then `arch` is ignored).

open_clip's own loader falls back to a full unpickle when `torch.load(weights_only=True)` raises a
TypeError, so the weights are read here (safetensors, or `torch.load(weights_only=True)` only) and put
into the model open_clip builds, with the same key conversions open_clip applies.

Person score: for each of up to 8 evenly spaced frames (MAX_SCORED_FRAMES), the softmax (at the model's logit scale) over
PERSON_PROMPTS + OTHER_PROMPTS, summed over PERSON_PROMPTS; the score is its mean over those frames, in [0, 1].
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from realbase.errors import UserError, one_line
from realbase.video import evenly_spaced

PERSON_PROMPTS = (
    "a photo of a person.",
    "a photo of a man.",
    "a photo of a woman.",
    "a photo of a child.",
    "a photo of people.",
)
OTHER_PROMPTS = (
    "a photo of an empty room.",
    "a photo of a landscape.",
    "a photo of an empty street.",
    "a photo of an animal.",
    "a photo of an object.",
    "a photo of a vehicle.",
    "a photo of text.",
    "an abstract pattern.",
)
MAX_SCORED_FRAMES = 8


class ClipModel:
    def __init__(self, model, preprocess, tokenizer, device: str = "cpu"):
        self.model, self.preprocess, self.tokenizer, self.device = model.eval().requires_grad_(False), preprocess, tokenizer, device
        self._prompt_emb: torch.Tensor | None = None
        self._last_images: tuple[tuple, torch.Tensor] | None = None

    @classmethod
    def load(cls, arch: str, checkpoint: Path | str, device: str = "cpu") -> "ClipModel":
        import open_clip

        checkpoint = Path(checkpoint)
        if checkpoint.is_dir():
            if not (checkpoint / "open_clip_config.json").is_file():
                raise UserError(f"--clip-checkpoint folder {checkpoint} has no open_clip_config.json")
            name = f"local-dir:{checkpoint.resolve()}"
            weights = open_clip.factory._find_checkpoint_in_dir(checkpoint)
            if weights is None:
                raise UserError(f"--clip-checkpoint folder {checkpoint} has no .safetensors/.bin/.pth weights")
            weights = Path(weights)
        elif checkpoint.is_file():
            name, weights = _arch_name(arch), checkpoint
        else:
            raise UserError(f"--clip-checkpoint not found: {checkpoint}")
        state = _read_state_dict(weights)
        root = logging.getLogger()
        root.addFilter(_not_random_warning)  # open_clip warns "initialized randomly": the weights come next
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=None, load_weights=False, pretrained_text=False, device="cpu"
            )
            tokenizer = open_clip.get_tokenizer(name)
        except (RuntimeError, ValueError, KeyError, TypeError, OSError) as e:
            raise UserError(f"cannot build open_clip architecture {arch!r}: {one_line(e)}") from None
        finally:
            root.removeFilter(_not_random_warning)
        try:
            _load_into(model, state)
        except (RuntimeError, KeyError, ValueError, StopIteration) as e:
            raise UserError(f"--clip-checkpoint {checkpoint} does not fit --clip-arch {arch!r}: {one_line(e)}") from None
        return cls(model.to(device), preprocess, tokenizer, device)

    @torch.no_grad()
    def image_embeddings(self, frames: np.ndarray | Sequence[np.ndarray], batch_size: int = 16) -> torch.Tensor:
        """L2-normalised embeddings [T, D] of uint8 RGB frames [T, H, W, 3]."""
        from PIL import Image

        frames = np.ascontiguousarray(frames)
        # The person score and the clip captioner embed the same frames of a clip: keep the last result.
        key = (frames.shape, hashlib.blake2b(frames.data, digest_size=16).digest())
        if self._last_images is not None and self._last_images[0] == key:
            return self._last_images[1]
        out = []
        for i in range(0, len(frames), batch_size):
            batch = torch.stack([self.preprocess(Image.fromarray(np.ascontiguousarray(f))) for f in frames[i : i + batch_size]])
            out.append(self.model.encode_image(batch.to(self.device)).float())
        if not out:
            raise ValueError("no frames to embed")
        emb = torch.nn.functional.normalize(torch.cat(out), dim=-1).cpu()
        self._last_images = (key, emb)
        return emb

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings [N, D] of texts."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()

    def label_probs(self, frames: np.ndarray, text_emb: torch.Tensor) -> torch.Tensor:
        """Softmax over the texts [N] for each frame, averaged over frames -> [N]."""
        scale = float(self.model.logit_scale.exp().clamp(max=100))
        logits = scale * self.image_embeddings(frames) @ text_emb.T
        return logits.softmax(dim=-1).mean(dim=0)

    def person_score(self, frames: np.ndarray) -> float:
        """Mean probability mass on the "person" prompts (see the module docstring), in [0, 1]."""
        frames = np.asarray(frames)
        if len(frames) == 0:
            return 0.0
        if self._prompt_emb is None:
            self._prompt_emb = self.text_embeddings(PERSON_PROMPTS + OTHER_PROMPTS)
        return float(self.label_probs(evenly_spaced(frames, MAX_SCORED_FRAMES), self._prompt_emb)[: len(PERSON_PROMPTS)].sum())

    def zero_shot(self, frames: np.ndarray, labels: Sequence[str], template: str = "{}") -> tuple[str, float]:
        """The label whose `template`-formatted text the frames match best, and its frame-averaged probability."""
        if not labels:
            raise ValueError("zero_shot needs at least one label")
        probs = self.label_probs(frames, self.text_embeddings([template.format(label) for label in labels]))
        best = int(probs.argmax())
        return labels[best], float(probs[best])


def _not_random_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("No pretrained weights loaded")



def _arch_name(arch: str) -> str:
    import open_clip

    path = Path(arch)
    if arch.endswith(".json"):
        if not path.is_file():
            raise UserError(f"--clip-arch config not found: {arch}")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"--clip-arch {arch} is not a readable JSON file: {one_line(e)}") from None
        if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise UserError(f"--clip-arch {arch} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
        if open_clip.get_model_config(path.stem) != cfg:
            open_clip.add_model_config(path)
        return path.stem
    if arch not in open_clip.list_models():
        raise UserError(f"unknown --clip-arch {arch!r}: give an open_clip architecture (e.g. ViT-B-32) or a model-config JSON")
    return arch


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only: safetensors, or a torch file through the weights-only unpickler (docs/curation.md, captions)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to read the file is the user's bad checkpoint
        raise UserError(f"--clip-checkpoint {path} is not a readable weights file (safetensors or weights-only torch): {one_line(e)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--clip-checkpoint {path} holds no state dict of tensors")
    if next(iter(state)).startswith("module."):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _load_into(model, state: dict[str, torch.Tensor]) -> None:
    # The conversions of open_clip.factory.load_checkpoint (3.3.0), minus its file reading.
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        param = getattr(model, key, None)
        if key in state and param is not None and param.ndim != state[key].ndim:
            state[key] = state[key].reshape(param.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    state.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    model.load_state_dict(state, strict=True)
