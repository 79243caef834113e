"""Tiny random-weight models and shards for tests, built the way users' real ones arrive.

Models: `tiny_model(family, task)` saves a tiny diffusers pipeline with `save_pretrained` (once per test process)
and returns its folder; load it with `realdpo.models.load_spec(path)`. conftest.py's `tiny_*` fixtures wrap it.

Shards: `write_tiny_shard(path, samples)` writes a curated-shard-shaped tar (mp4/txt/jpg/json members, docs/curation.md);
`synthetic_clip(...)` makes a small moving-pattern mp4.
"""

from __future__ import annotations

import atexit
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

_ROOT: Path | None = None
_BUILT: dict[tuple[str, str, str | None], Path] = {}


def reset_accelerate() -> None:
    """accelerate keeps process-wide state; each train() call in one process starts from a clean one."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def _root() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="realdpo-tiny-"))
        atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)
    return _ROOT


def tiny_model(family: str = "cogvideox", task: str = "t2v", variant: str | None = None) -> Path:
    """Folder of a tiny `family`/`task` pipeline saved with save_pretrained (built once per process);
    variant="1.5" gives CogVideoX 1.5's layout."""
    from realdpo.models.tiny import save_tiny_pipeline

    key = (family, task, variant)
    if key not in _BUILT:
        _BUILT[key] = save_tiny_pipeline(family, task, _root() / f"{family}{variant or ''}-{task}", variant=variant)
    return _BUILT[key]




def synthetic_clip(frames: int = 24, height: int = 48, width: int = 80, fps: float = 8.0, seed: int = 0) -> bytes:
    """An mp4 of a bright square moving over a noisy background."""
    from realbase.video import encode_mp4

    rng = np.random.default_rng(seed)
    bg = rng.integers(40, 120, size=(height, width, 3), dtype=np.uint8)
    out = np.repeat(bg[None], frames, axis=0)
    for t in range(frames):
        x = (4 + 2 * t) % max(1, width - 12)
        out[t, 10:22, x:x + 12] = (230, 200, 40)
    return encode_mp4(out, fps)


def _jpg_of_first_frame(mp4: bytes) -> bytes:
    from PIL import Image

    from realbase.video import decode_frames

    buf = io.BytesIO()
    Image.fromarray(decode_frames(mp4, [0])[0]).save(buf, format="JPEG")
    return buf.getvalue()


def write_tiny_shard(path: Path, samples: list[tuple[str, str, bytes]]) -> Path:
    """Write (key, caption, mp4) samples as a curated shard with mp4/txt/jpg/json members."""
    import webdataset as wds

    from realbase.video import video_info

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as w:
        for key, caption, mp4 in samples:
            n, fps, width, height = video_info(mp4)
            meta = {"source": f"{key}.mp4", "start_frame": 0, "end_frame": n, "fps": fps, "width": width,
                    "height": height, "num_frames": n, "scores": {}, "caption_source": "test"}
            w.write({"__key__": key, "mp4": mp4, "txt": caption.encode(), "jpg": _jpg_of_first_frame(mp4),
                     "json": json.dumps(meta).encode()})
    return path


def negative_plan(spec=None, round: int = 1, weights: str = "base", **options):
    """The NegativePlan of `realdpo negatives` options (e.g. negatives=2, neg_steps=2, negatives_from="...")."""
    from realdpo.configs.negatives import NegativesConfig
    from realdpo.generation.recipes import NegativePlan

    cfg = NegativesConfig(shards=["unused"], **options)
    cfg.validate_negative_options()
    return NegativePlan.from_options(cfg, spec, round=round, weights=weights)


def write_raw_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar of exactly these (member name, bytes): for shards a curator would never write (bad members)."""
    import tarfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def curated_members(key: str, caption: str | bytes, mp4: bytes, meta: bytes | None = b"{}",
                    jpg: bytes | None = None) -> list[tuple[str, bytes]]:
    """The members of one curated-shard sample (txt as given: str is UTF-8 encoded; meta None: no json member;
    jpg None: the mp4's first frame, which must then decode)."""
    txt = caption.encode() if isinstance(caption, str) else caption
    members = [(f"{key}.mp4", mp4), (f"{key}.txt", txt), (f"{key}.jpg", jpg or _jpg_of_first_frame(mp4))]
    return members + ([(f"{key}.json", meta)] if meta is not None else [])


def lora_transformer(spec, rank=4):
    """The spec's transformer with a LoRA adapter whose B is non-zero, so policy and reference differ."""
    import torch
    from peft import LoraConfig

    tr = spec.transformer
    if not getattr(tr, "peft_config", None):
        tr.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=spec.lora_target_modules))
        torch.manual_seed(1)
        with torch.no_grad():
            for n, p in tr.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02)
    return tr
