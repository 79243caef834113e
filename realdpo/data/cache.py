"""On-disk cache of real-clip latents, their conditioning, and generated negatives (safetensors, never pickle).

Layout: ROOT/<model fingerprint>/<frames>x<height>x<width>@<fps>fps/
    real/<key>.safetensors          {"latents": [1, ...], "prompt_embeds": [1, ...], ...cond}
    neg-r<round>/<key>.safetensors  {"latents": [n, ...], "seeds": int64 [n]}
Every write goes to a temporary file in the same folder and is moved into place with os.replace, so a killed run
leaves either the old entry or the new one, never a torn file; concurrent ranks may write the same entry.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def default_cache_root() -> Path:
    env = os.environ.get("REALDPO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "realdpo" / "latents"


def _file_name(key: str) -> str:
    safe = _SAFE.sub("_", key)
    if safe != key or not safe:  # keep distinct keys distinct after sanitising
        safe = f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
    return safe + ".safetensors"


def _fps_tag(fps: float) -> str:
    return f"{fps:g}".replace(".", "p")


class LatentCache:
    def __init__(self, root: Path | str | None, fingerprint: str, frames: int, height: int, width: int, fps: float):
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        self.fingerprint = fingerprint
        self.frames, self.height, self.width, self.fps = frames, height, width, fps
        self.dir = self.root / fingerprint / f"{frames}x{height}x{width}@{_fps_tag(fps)}fps"

    def __repr__(self) -> str:
        return f"LatentCache({self.dir})"

    # -- files -----------------------------------------------------------------------------------------------------
    def real_path(self, key: str) -> Path:
        return self.dir / "real" / _file_name(key)

    def negatives_path(self, key: str, round: int) -> Path:
        return self.dir / f"neg-r{round}" / _file_name(key)

    def _write(self, path: Path, tensors: dict[str, torch.Tensor], key: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        meta = {"key": key, "fingerprint": self.fingerprint, "size": f"{self.frames}x{self.height}x{self.width}",
                "fps": f"{self.fps:g}"}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(data, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @staticmethod
    def _read(path: Path) -> dict[str, torch.Tensor] | None:
        if not path.is_file():
            return None
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError):  # unreadable entry: treat as missing, it gets rewritten
            return None

    # -- real clips --------------------------------------------------------------------------------------------------
    def get_real(self, key: str) -> dict[str, torch.Tensor] | None:
        """{"latents": [1, ...], plus cond tensors (batch dim 1)}, or None when not cached."""
        data = self._read(self.real_path(key))
        return data if data and "latents" in data else None

    def put_real(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        if "latents" not in tensors:
            raise ValueError("put_real needs a 'latents' tensor")
        self._write(self.real_path(key), tensors, key)

    def has_real(self, key: str) -> bool:
        return self.real_path(key).is_file()

    # -- negatives ---------------------------------------------------------------------------------------------------
    def negative_seeds(self, key: str, round: int) -> list[int]:
        data = self._read(self.negatives_path(key, round))
        return [] if data is None else [int(s) for s in data["seeds"].tolist()]

    def get_negatives(self, key: str, round: int, k: int) -> torch.Tensor | None:
        """The first k stored negatives [k, ...], or None when fewer than k are stored."""
        data = self._read(self.negatives_path(key, round))
        if data is None or data["latents"].shape[0] < k:
            return None
        return data["latents"][:k]

    def get_pair(self, key: str, round: int, k: int) -> tuple[dict[str, torch.Tensor], torch.Tensor] | None:
        """(real entry, negatives [k, ...]) of a cached clip, or None if either is missing."""
        real = self.get_real(key)
        neg = self.get_negatives(key, round, k) if real is not None else None
        return None if neg is None else (real, neg)

    def put_negatives(self, key: str, round: int, latents: torch.Tensor, seeds: list[int] | torch.Tensor) -> None:
        """Add negatives [n, ...] generated from `seeds` (one each) after those already stored; seeds already
        present are not stored twice."""
        seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
        if len(seeds) != latents.shape[0]:
            raise ValueError(f"{latents.shape[0]} negatives but {len(seeds)} seeds")
        path = self.negatives_path(key, round)
        old = self._read(path)
        have = [] if old is None else [int(s) for s in old["seeds"].tolist()]
        new = [i for i, s in enumerate(seeds) if s not in have]
        if not new:
            return
        lat = latents[new].to("cpu")
        if old is not None:
            lat = torch.cat([old["latents"], lat.to(old["latents"].dtype)])
        self._write(path, {"latents": lat, "seeds": torch.tensor(have + [seeds[i] for i in new], dtype=torch.int64)}, key)
