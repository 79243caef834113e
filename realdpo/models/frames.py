"""Conversions between the spec interface's video tensors (float, [-1, 1], channels first) and uint8 pixels."""

from __future__ import annotations

import numpy as np
import torch


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [T, 3, H, W] in [-1, 1]."""
    # a read-only array (e.g. decoded into a bytes buffer) is copied: torch.from_numpy warns on one, though .float()
    # never writes to it
    return torch.from_numpy(np.require(frames, requirements=["C", "W"])).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """[F, 3, H, W] in [-1, 1] -> uint8 [F, H, W, 3]."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
