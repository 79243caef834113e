"""The lab's clip sets, each a deterministic function of (set name, seed, index):

- `web`: the pretraining mix. A clip is unreal with probability `WEB_UNREAL_FRACTION`; an unreal clip's kind is
  drawn uniformly from `UNREAL_KINDS` (so each kind is WEB_UNREAL_FRACTION / 3 of the mix).
- `real`: physical clips only, the post-training footage (written to disk and curated like any footage).
- `heldout`: physical clips whose first frames and captions are the experiment's and the demo's prompts.

`write_set` writes mp4 files with a caption sidecar (`<name>.txt`, what `realdpo curate`'s sidecar captioner reads)
and a `world.jsonl` of ground truth beside them (never read by training); `curated_real_set` writes the real set
and curates it with `realdpo curate`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from realbase.errors import UserError
from realbase.files import write_atomic
from realbase.video import encode_mp4
from realdpo.lab.world import FPS, SIZE, UNREAL_KINDS, Clip, derive_seed, render_clip

WEB_UNREAL_FRACTION = 0.4
SETS = ("web", "real", "heldout")


def web_kind(seed: int, index: int, unreal_fraction: float = WEB_UNREAL_FRACTION) -> str:
    rng = np.random.default_rng(derive_seed("web-kind", seed, index))
    return str(rng.choice(UNREAL_KINDS)) if rng.random() < unreal_fraction else "physical"


def set_clip(name: str, index: int, seed: int = 0, unreal_fraction: float = WEB_UNREAL_FRACTION) -> Clip:
    """Clip `index` of set `name` ("web", "real" or "heldout") drawn with `seed`. `unreal_fraction` sets the web
    mix's unreal share (0 gives the physical-only mix of the lab's positive control; a clip keeps its scene)."""
    if name not in SETS:
        raise ValueError(f"unknown lab set {name!r}; choose one of {', '.join(SETS)}")
    kind = web_kind(seed, index, unreal_fraction) if name == "web" else "physical"
    return render_clip(derive_seed("lab", name, seed, index), kind)


def write_set(out: Path, name: str, count: int, seed: int = 0, crf: int = 12) -> list[Path]:
    """Write clips 0..count-1 of set `name` as OUT/<name>-<index:05d>.mp4 (+ .txt caption) and OUT/world.jsonl.
    Each file is written under a temporary name and renamed, so a killed run never leaves a torn clip."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths, rows = [], []
    for i in range(count):
        clip = set_clip(name, i, seed)
        path = out / f"{name}-{i:05d}.mp4"
        for target, data in ((path.with_suffix(".txt"), (clip.caption + "\n").encode()),
                             (path, encode_mp4(clip.frames, FPS, crf=crf))):
            write_atomic(target, data)
        paths.append(path)
        rows.append({"file": path.name, "set": name, "seed": seed, "index": i, "kind": clip.kind,
                     "gravity": clip.gravity, "caption": clip.caption, "event_frame": clip.event_frame,
                     "centers": clip.centers.round(4).tolist(), "radii": clip.radii.round(4).tolist()})
    write_atomic(out / "world.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return paths


def lab_curate_config(src: Path, out: Path):
    """`realdpo curate` options for lab footage: the defaults, except that 32x32 clips are not 'low-resolution', a
    9-frame clip (1.1 s) is long enough, the text filter is off (the OCR detector reads 4-5 px balls upscaled to
    --text-side as text; the lab draws none) and so is dedup (every clip is its own draw, but one ball on a plain
    32x32 background hashes alike)."""
    from realaction.config import CurateConfig

    return CurateConfig(src=Path(src), out=Path(out), min_short_side=SIZE, max_side=SIZE, max_text_area=1.0,
                        min_seconds=1.0, dedup=False, workers=1)


def curated_real_set(folder: Path, count: int, seed: int = 0) -> list[str]:
    """Write `count` clips of the real set to FOLDER/footage and curate them into FOLDER/curated (both skipped
    when already there); returns the shard paths."""
    from realaction.pipeline import curate

    folder = Path(folder)
    footage, curated = folder / "footage", folder / "curated"
    if not (footage / "world.jsonl").is_file():
        write_set(footage, "real", count, seed)
    if not (curated / "summary.json").is_file():
        curate(lab_curate_config(footage, curated))
    shards = sorted(str(p) for p in (curated / "shards").glob("*.tar"))
    if not shards:
        raise UserError(f"curation kept no lab clips; see {curated / 'manifest.jsonl'}")
    return shards


def render(cfg) -> list[Path]:
    """`realdpo lab render`: write a set and say where the lab model is (for `--model`)."""
    from rich.console import Console

    from realdpo.lab.model import MODEL_DIR

    cfg.validate()
    paths = write_set(cfg.out, cfg.set, cfg.count, cfg.seed)
    Console(stderr=True).print(f"wrote {len(paths)} {cfg.set} clips (mp4 + .txt captions) and world.jsonl to "
                               f"{cfg.out}; the lab model (for --model) is {MODEL_DIR}", markup=False)
    return paths
