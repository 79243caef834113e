"""FVD features from the I3D TorchScript file that StyleGAN-V and the common FVD code use (`i3d_torchscript.pt`).

The calling convention follows the common FVD code (JunyaoHu/common_metrics_on_video_quality, fvd/styleganv):
clips of 16 consecutive frames, each frame's shorter side resized to 224 and centre-cropped to 224x224, as float
[B, 3, 16, 224, 224] in [-1, 1], called as `detector(x, rescale=False, resize=False, return_features=True)`, which
returns the 400-d logits before the softmax ("features before the classifier"). StyleGAN-V itself feeds uint8
[0, 255] with `rescale=True, resize=True`; the model does that rescaling/resizing internally, so both are the same
network — we resize on the CPU ourselves (aspect-preserving, centre crop) and pass [-1, 1].

Loading uses `torch.jit.load`: the file is a TorchScript archive, not a state dict, so `weights_only=True` does not
apply (TorchScript deserialises its own restricted format, not arbitrary pickled Python objects).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from realaction.errors import UserError


def load_i3d(path: Path) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():  # torch marks TorchScript deprecated; the published I3D file is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # not a TorchScript archive, truncated file, ...
        raise UserError(f"--i3d {path}: not a TorchScript file ({str(e).splitlines()[0][:120]})") from None
    return model.eval()


def to_i3d_input(clips: np.ndarray) -> torch.Tensor:
    """uint8 [B, 16, 224, 224, 3] -> float [B, 3, 16, 224, 224] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(clips)).permute(0, 4, 1, 2, 3).float()
    return x / 127.5 - 1.0


@torch.no_grad()
def i3d_features(detector: torch.nn.Module, clips: list[np.ndarray], batch_size: int = 4) -> np.ndarray:
    """I3D features [N, D] of uint8 clips [16, 224, 224, 3]."""
    out = []
    for i in range(0, len(clips), batch_size):
        x = to_i3d_input(np.stack(clips[i:i + batch_size]))
        feats = detector(x, rescale=False, resize=False, return_features=True)
        out.append(feats.reshape(len(x), -1).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))
