"""On-disk cache of real-clip latents, their conditioning, encoded prompts and negatives (safetensors, never pickle).

Layout: ROOT/<model fingerprint>/<frames>x<height>x<width>@<fps>fps/
    real/<key>-<content id>.safetensors                  {"latents": [1, ...], "prompt_embeds": [1, ...], ...cond}
    prompts/<text hash>.safetensors                       {"prompt_embeds": [1, ...]} (e.g. the negative prompt)
    neg/<recipe tag>/<key>-<content id>-s<seed>.safetensors    {"latents": [1, ...]}, one negative per file
    neg/<recipe tag>/recipe.json                          what the tag stands for (source, steps, guidance, ...)

Every name says what its entry was made from. A clip's content id (`ClipSample.content_id`) hashes its key, caption,
mp4 bytes and the shard json's source sha256, frame range and curator config hash; a recipe tag hashes how its
negatives were made (source, sampler, steps, guidance, negative prompt, strength, edits, round, generating weights).
A re-curated clip, another dataset with the same file names, or a changed setting therefore finds no entry and makes
its own: a stale entry is never read (it stays on disk until the folder is deleted).

Every write goes to a hidden temporary file in the same folder and is moved into place with os.replace, so a killed
run leaves either no entry or a whole one, never a torn file (its temporary file is swept by a later run). One negative per file means no file is ever rewritten:
processes working on the same clip never race, and a kill loses only the negatives in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from realbase.files import atomic_file, write_atomic

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def default_cache_root() -> Path:
    env = os.environ.get("REALDPO_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "realdpo" / "latents"


def _safe(name: str) -> str:
    safe = _SAFE.sub("_", name)
    if safe != name or not safe:  # keep distinct names distinct after sanitising
        safe = f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return safe


def _fps_tag(fps: float) -> str:
    return f"{fps:g}".replace(".", "p")


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class ClipRef:
    """A clip as the cache knows it: its sample key and the hash of what it is made of."""

    key: str
    content_id: str

    @property
    def name(self) -> str:
        return _safe(f"{self.key}-{self.content_id}")


class LatentCache:
    def __init__(self, root: Path | str | None, fingerprint: str, frames: int, height: int, width: int, fps: float):
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        self.fingerprint = fingerprint
        self.frames, self.height, self.width, self.fps = frames, height, width, fps
        self.dir = self.root / fingerprint / f"{frames}x{height}x{width}@{_fps_tag(fps)}fps"

    def __repr__(self) -> str:
        return f"LatentCache({self.dir})"

    # -- files -----------------------------------------------------------------------------------------------------
    def real_path(self, ref: ClipRef) -> Path:
        return self.dir / "real" / f"{ref.name}.safetensors"

    def prompt_path(self, text: str) -> Path:
        return self.dir / "prompts" / f"{text_hash(text)}.safetensors"

    def negatives_dir(self, tag: str) -> Path:
        return self.dir / "neg" / _safe(tag)

    def negative_path(self, ref: ClipRef, tag: str, seed: int) -> Path:
        return self.negatives_dir(tag) / f"{ref.name}-s{int(seed)}.safetensors"

    def _write(self, path: Path, tensors: dict[str, torch.Tensor], **meta: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        meta = {"fingerprint": self.fingerprint, "size": f"{self.frames}x{self.height}x{self.width}",
                "fps": f"{self.fps:g}", **meta}
        with atomic_file(path) as tmp:  # one metadata entry: safetensors writes several in a per-process random order
            save_file(data, tmp, metadata={"realdpo": json.dumps(meta, sort_keys=True)})

    def sweep_temporaries(self, older_than_s: float = 3600.0) -> int:
        """Delete the hidden temporary files killed runs left behind (no reader ever opens them); only old ones,
        so another run's write in progress is never touched. Returns how many were deleted."""
        import time

        n, now = 0, time.time()
        for tmp in self.dir.glob("**/.*.tmp") if self.dir.is_dir() else []:
            try:
                if now - tmp.stat().st_mtime > older_than_s:
                    tmp.unlink()
                    n += 1
            except OSError:
                pass
        return n

    @staticmethod
    def _read(path: Path) -> dict[str, torch.Tensor] | None:
        if not path.is_file():
            return None
        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError):  # unreadable entry: treat as missing, it gets rewritten
            return None

    # -- real clips --------------------------------------------------------------------------------------------------
    def get_real(self, ref: ClipRef) -> dict[str, torch.Tensor] | None:
        """{"latents": [1, ...], plus cond tensors (batch dim 1)}, or None when not cached."""
        data = self._read(self.real_path(ref))
        return data if data and "latents" in data else None

    def put_real(self, ref: ClipRef, tensors: dict[str, torch.Tensor]) -> None:
        if "latents" not in tensors:
            raise ValueError("put_real needs a 'latents' tensor")
        self._write(self.real_path(ref), tensors, key=ref.key, content_id=ref.content_id)

    def has_real(self, ref: ClipRef) -> bool:
        return self.real_path(ref).is_file()

    # -- prompts -----------------------------------------------------------------------------------------------------
    def get_prompt(self, text: str) -> dict[str, torch.Tensor] | None:
        """The cached encoding of `text` ({"prompt_embeds": [1, ...]}), or None."""
        return self._read(self.prompt_path(text))

    def put_prompt(self, text: str, tensors: dict[str, torch.Tensor]) -> None:
        self._write(self.prompt_path(text), tensors, text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())

    # -- negatives ---------------------------------------------------------------------------------------------------
    def write_recipe(self, tag: str, recipe: dict) -> None:
        """recipe.json beside a tag's negatives (what the tag's hash stands for), written once."""
        path = self.negatives_dir(tag) / "recipe.json"
        if path.is_file():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(recipe, indent=1, sort_keys=True))

    def recipes(self) -> dict[str, dict]:
        """{tag: recipe.json's settings} of every set of negatives in this cache (unreadable ones left out)."""
        out = {}
        for path in sorted((self.dir / "neg").glob("*/recipe.json")) if (self.dir / "neg").is_dir() else []:
            try:
                settings = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(settings, dict):
                out[path.parent.name] = settings
        return out

    def has_negative(self, ref: ClipRef, tag: str, seed: int) -> bool:
        return self.negative_path(ref, tag, seed).is_file()

    def put_negative(self, ref: ClipRef, tag: str, seed: int, latents: torch.Tensor) -> None:
        """Store one negative (latents [...] without a batch dim, or [1, ...])."""
        latents = latents if latents.dim() and latents.shape[0] == 1 else latents[None]
        self._write(self.negative_path(ref, tag, seed), {"latents": latents}, key=ref.key,
                    content_id=ref.content_id, tag=tag, seed=str(int(seed)))

    def get_negatives(self, ref: ClipRef, tag: str, seeds: Sequence[int]) -> torch.Tensor | None:
        """The negatives of `seeds` [n, ...], in that order, or None when any is missing."""
        out = []
        for s in seeds:
            data = self._read(self.negative_path(ref, tag, s))
            if data is None or "latents" not in data:
                return None
            out.append(data["latents"])
        return torch.cat(out) if out else None
