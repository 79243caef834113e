"""Options of `realdpo eval`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cli.options import field
from realaction.errors import UserError


@dataclass
class EvalConfig:
    videos: list[str] = field(default_factory=list, help="NAME=DIR of generated videos, one per method (repeatable).")
    prompts: Optional[Path] = field(None, help="Text file, one prompt per line, in the numeric order of the video file names.")
    real: list[str] = field(default_factory=list, greedy=True, help="Curated shards (paths or globs) of real clips, for FVD.")
    out: Path = field(Path("report"), help="Report folder: report.json, metrics.png, <name>_strip.png.")
    workers: int = field(2, help="Videos scored in parallel.")
    flow_side: int = field(256, help="Shorter side, in pixels, of the frames optical flow runs on.")
    sample_fps: float = field(8.0, help="Frame rate videos are sampled to for dynamic degree.")
    clip_checkpoint: Optional[Path] = field(None, help="Local open_clip checkpoint for clipsim (skipped when absent).")
    clip_arch: str = field("ViT-B-32", help="open_clip architecture of --clip-checkpoint.")
    i3d: Optional[Path] = field(None, help="I3D TorchScript file (i3d_torchscript.pt) for FVD (skipped when absent).")
    pairs: list[str] = field(default_factory=list, help="Held-out curated shards with cached negatives, for pref_accuracy.")
    model: Optional[Path] = field(None, help="Model folder for pref_accuracy; default is the built-in tiny model.")
    lora: Optional[Path] = field(None, help="LoRA folder of the trained policy, for pref_accuracy.")
    beta: float = field(5000.0, help="DPO beta used for the pref_accuracy margin.")
    cache_dir: Optional[Path] = field(None, help="Latent/negative cache used by pref_accuracy (as in train).")

    def validate(self) -> None:
        if not self.videos:
            raise UserError("--videos NAME=DIR is required (once per method)")
        for spec in self.videos:
            name, sep, folder = spec.partition("=")
            if not sep or not name or not folder:
                raise UserError(f"--videos must look like NAME=DIR, got {spec!r}")
            if not Path(folder).is_dir():
                raise UserError(f"--videos {name}: not a folder: {folder}")
        if self.prompts is not None and not Path(self.prompts).is_file():
            raise UserError(f"--prompts not found: {self.prompts}")
        for name in ("clip_checkpoint", "i3d", "model", "lora"):
            p = getattr(self, name)
            if p is not None and not Path(p).exists():
                raise UserError(f"--{name.replace('_', '-')} not found: {p}")
        if self.workers < 1 or self.flow_side < 16 or self.sample_fps <= 0:
            raise UserError("--workers must be >= 1, --flow-side >= 16, --sample-fps > 0")
