"""A tiny random-weight open_clip model for tests: a model-config JSON plus a weights file, loadable offline.

    from tiny_clip import write_tiny_clip
    ckpt, arch = write_tiny_clip(tmp_path)            # tmp_path/tiny-clip.safetensors, tmp_path/tiny-clip.json
    model = ClipModel.load(str(arch), ckpt)           # or: --clip-checkpoint ckpt --clip-arch arch
    write_tiny_clip(tmp_path, fmt="pt")               # a torch.save'd state dict instead
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from realbase.clip_model import _not_random_warning

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    # open_clip's SimpleTokenizer (bundled BPE vocab, offline) needs vocab 49408 and context 77
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def write_tiny_clip(folder: Path, name: str = "tiny-clip", seed: int = 0, fmt: str = "safetensors") -> tuple[Path, Path]:
    """Build a random tiny CLIP with open_clip, save its weights (`fmt` "safetensors" or "pt") and config.

    Returns (checkpoint path, config JSON path); pass the JSON's path as the architecture.
    """
    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arch = folder / f"{name}.json"
    arch.write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
    open_clip.add_model_config(arch)
    torch.manual_seed(seed)
    quiet = logging.getLogger()
    quiet.addFilter(_not_random_warning)  # random weights are the point here
    try:
        model = open_clip.create_model(arch.stem, pretrained=None, pretrained_text=False)
    finally:
        quiet.removeFilter(_not_random_warning)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        ckpt = folder / f"{name}.safetensors"
        save_file(state, str(ckpt))
    elif fmt == "pt":
        ckpt = folder / f"{name}.pt"
        torch.save(state, ckpt)
    else:
        raise ValueError(f"fmt must be 'safetensors' or 'pt', not {fmt!r}")
    return ckpt, arch
