"""FVD features from the I3D TorchScript file that StyleGAN-V and the common FVD code use (`i3d_torchscript.pt`).

The calling convention follows the common FVD code (JunyaoHu/common_metrics_on_video_quality, fvd/styleganv):
clips of 16 consecutive frames, each frame's shorter side resized to 224 and centre-cropped to 224x224, as float
[B, 3, 16, 224, 224] in [-1, 1], called as `detector(x, rescale=False, resize=False, return_features=True)`, which
returns the 400-d logits before the softmax ("features before the classifier"). StyleGAN-V itself feeds uint8
[0, 255] with `rescale=True, resize=True`; the model does that rescaling/resizing internally, so both are the same
network — we resize on the CPU ourselves (aspect-preserving, centre crop) and pass [-1, 1].

Loading uses `torch.jit.load`: the file is a TorchScript archive, not a state dict, so `weights_only=True` does not
apply, and the archive is a program that runs when called. So a file is loaded only when its hash is on
`KNOWN_I3D` (the published detector) or the user passes `--trust-i3d`.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import torch

from realbase.errors import UserError, one_line

# Hashes of FVD detector files known to be the published ones; a file is accepted when its sha256 or its git blob
# id (`git hash-object FILE`) is here. Provenance: StyleGAN-V's i3d_torchscript.pt (Dropbox link ge9e5ujwgetktms
# in its code) is committed to github.com/JunyaoHu/common_metrics_on_video_quality as fvd/styleganv/
# i3d_torchscript.pt; the blob id below is read from that repository's git tree (commits 7098471..5f75173, the same
# blob throughout). The file itself could not be downloaded while writing this, so its sha256 is not listed and the
# blob id is not checked against the Dropbox copy: add the sha256 of a copy you verified.
KNOWN_I3D = {
    "git:93daef59c7ae0e9e8f76225521407e60cbafa6aa": "StyleGAN-V i3d_torchscript.pt (common_metrics_on_video_quality)",
}


def file_digests(path: Path) -> tuple[str, str]:
    """("sha256:<hex>", "git:<hex>") of a file: its sha256 and its git blob id (sha1 of b"blob <size>\\0" + bytes)."""
    sha256, blob = hashlib.sha256(), hashlib.sha1()
    blob.update(b"blob %d\0" % Path(path).stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha256.update(chunk)
            blob.update(chunk)
    return f"sha256:{sha256.hexdigest()}", f"git:{blob.hexdigest()}"


def check_i3d(path: Path, trust: bool = False) -> None:
    """UserError unless `path` is a known FVD detector file or `trust` (--trust-i3d) is given."""
    if trust:
        return
    sha256, blob = file_digests(path)
    if sha256 not in KNOWN_I3D and blob not in KNOWN_I3D:
        raise UserError(f"--i3d {path} is not a known FVD detector file ({sha256}); loading it runs the TorchScript "
                        "program inside: pass --trust-i3d if you trust it")


def load_i3d(path: Path, trust: bool = False) -> torch.jit.ScriptModule:
    """The detector in `path`, after check_i3d."""
    check_i3d(path, trust)
    try:
        with warnings.catch_warnings():  # torch marks TorchScript deprecated; the published I3D file is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # not a TorchScript archive, truncated file, ...
        raise UserError(f"--i3d {path}: not a TorchScript file ({one_line(e, 120, first_line=True)})") from None
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
