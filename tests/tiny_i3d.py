"""A tiny random-weight stand-in for StyleGAN-V's `i3d_torchscript.pt`, with the same call signature.

`save_tiny_i3d(path)` scripts it with `torch.jit.script` and saves it, so tests load it through the same
`torch.jit.load` path as the real file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F


class TinyI3D(torch.nn.Module):
    def __init__(self, features: int = 24):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 8, kernel_size=(3, 8, 8), stride=(2, 8, 8))
        self.fc = torch.nn.Linear(8 * 2, features)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:  # the real model maps uint8-range input to [-1, 1] when asked
            x = x / 127.5 - 1.0
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        if x.shape[1] != 3 or x.shape[2] != 16 or x.shape[3] != 224 or x.shape[4] != 224:
            raise ValueError("expected [B, 3, 16, 224, 224]")
        h = torch.relu(self.conv(x))
        h = torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], dim=1)
        logits = self.fc(h)
        if return_features:
            return logits
        return torch.softmax(logits, dim=1)


def save_tiny_i3d(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(TinyI3D().eval()).save(str(path))
    return Path(path)
