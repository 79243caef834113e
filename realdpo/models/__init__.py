"""Model specs: one class per family, found from a folder's model_index.json."""

from __future__ import annotations

from pathlib import Path

import torch

from realbase.errors import UserError
from realdpo.models.base import Cond, ModelSpec, SpecOptions
from realdpo.models.cogvideox import CogVideoXSpec
from realdpo.models.common import read_model_index
from realdpo.models.hunyuanvideo15 import HunyuanVideo15Spec
from realdpo.models.ltx2 import LTX2Spec
from realdpo.models.wan import WanSpec

SPECS: tuple[type[ModelSpec], ...] = (CogVideoXSpec, WanSpec, HunyuanVideo15Spec, LTX2Spec)

__all__ = ["Cond", "ModelSpec", "SpecOptions", "CogVideoXSpec", "WanSpec", "HunyuanVideo15Spec", "LTX2Spec", "SPECS",
           "load_spec", "spec_class"]


def spec_class(path: Path) -> type[ModelSpec]:
    name = read_model_index(path).get("_class_name")
    for cls in SPECS:
        if cls.matches(path):
            return cls
    raise UserError(f"unsupported pipeline {name!r} in {path}; realdpo supports CogVideoX 1.0/1.5 (T2V, I2V) and "
                    "Wan 2.1/2.2 (T2V, I2V, TI2V), HunyuanVideo 1.5 (T2V, I2V) and LTX-2 (T2V, I2V)")


def load_spec(path: Path | str | None = None, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, task: str | None = None, *, offload_encoders: bool = True,
              group_offload: bool = False, options: SpecOptions | None = None) -> ModelSpec:
    """Load the model spec for a local diffusers folder; None loads the built-in tiny model. `task` ("t2v", "i2v")
    chooses for a model that runs both (Wan2.2-TI2V-5B); default: its pipeline's. On an accelerator,
    `offload_encoders` keeps the text/image encoders and the VAE in CPU memory until they run and `group_offload`
    streams the transformer block by block (for generation on small cards); see `realdpo.models.placement`.
    `options`: how the run uses the model (image noise, trained experts), set before the spec is returned."""
    if path is None:
        from realdpo.models.tiny import builtin_model_path

        path = builtin_model_path()
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"model folder not found: {path}")
    spec = spec_class(path).from_pretrained(path, device=device, dtype=dtype, task=task,
                                            offload_encoders=offload_encoders, group_offload=group_offload)
    if options is not None:
        spec.use(options)
    return spec
