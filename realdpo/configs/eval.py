"""Options of `realdpo eval`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from realbase.errors import UserError
from realbase.fields import check_numbers, field
from realbase.files import check_writable_folder
from realdpo.configs.common import ModelOptions, NegativeOptions

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class EvalConfig(ModelOptions, NegativeOptions):
    videos: list[str] = field(default_factory=list, required=True, help="NAME=DIR of generated videos, one per method (repeatable).")
    prompts: Optional[Path] = field(None, help="Text file, one prompt per line, in the numeric order of the video file names (default: a <stem>.txt beside each video).")
    real: list[str] = field(default_factory=list, help="Real clips for FVD: curated shards (paths or globs), video files or folders.")
    out: Path = field(Path("report"), help="Report folder: report.json, metrics.png, <name>_strip.png.")
    workers: int = field(2, help="Videos decoded and scored in parallel (processes).")
    flow_side: int = field(256, help="Shorter side, in pixels, videos are decoded at for the motion metrics (optical flow).")
    sample_fps: float = field(8.0, help="Frame rate videos are sampled to for dynamic degree (VBench uses 8).")
    clip_checkpoint: Optional[Path] = field(None, help="Local open_clip checkpoint for clipsim (skipped when absent).")
    clip_arch: str = field("ViT-B-32", help="open_clip architecture of --clip-checkpoint.")
    clip_frames: int = field(0, help="Frames per video embedded for clipsim, evenly spaced (0 = every frame).")
    i3d: Optional[Path] = field(None, help="I3D TorchScript file (i3d_torchscript.pt of StyleGAN-V) for FVD (skipped when absent). "
                                "torch.jit.load runs the program in it: accepted when its hash is a known FVD detector's, "
                                "else only with --trust-i3d.")
    trust_i3d: bool = field(False, help="Load an --i3d file that is not a known FVD detector file (it runs as a program: "
                            "only for a file you trust).")
    lab: bool = field(False, help="Also score the videos with the motion lab's physics tracker (lab videos: a ball at 32x32): physical_rate, lab_render_pass, lab_residual, lab_consistent_frames, lab_balls_found.")
    strip_videos: int = field(4, help="Videos per method shown in <name>_strip.png.")
    pairs: list[str] = field(default_factory=list, help="Held-out curated shards whose negatives are cached, for pref_accuracy (repeatable; quote globs; with --lora, and --model, --frames, --height, --width, --fps, --cache-dir, --seed and the --negatives-from/--neg-* options as in train).")
    lora: Optional[Path] = field(None, help="LoRA folder of the trained policy (train's OUT/lora), for pref_accuracy; the reference is the model without it.")
    pref_name: str = field("policy", help="Table row pref_accuracy is reported under; name a --videos method to join its row.")
    round: int = field(1, help="Negative round of the cached negatives used by pref_accuracy (their --negatives-from and --neg-* options as in train or negatives).")
    neg_lora: Optional[Path] = field(None, help="LoRA that generated the round >= 2 negatives of --pairs (`realdpo negatives --round R --lora DIR`).")
    pref_timesteps: int = field(4, help="Fixed timesteps (with fixed noise, from --seed) per pair for pref_accuracy.")
    t_min: float = field(0.0, help="Lowest pref_accuracy timestep, as a fraction of the schedule (as in train).")
    t_max: float = field(0.5, help="Highest pref_accuracy timestep, as a fraction of the schedule (as in train).")
    beta: float = field(5000.0, help="DPO beta used for the pref_margin (the implicit reward margin).")
    bootstrap: int = field(2000, help="Bootstrap resamples (over prompts, drawn from --seed) for the 95 % intervals of each metric and of the paired differences between methods.")

    def validate(self) -> None:
        check_numbers(self)
        if not self.videos:
            raise UserError("--videos NAME=DIR is required (once per method)")
        seen = set()
        for spec in self.videos:
            name, sep, folder = spec.partition("=")
            if not sep or not name or not folder:
                raise UserError(f"--videos must look like NAME=DIR, got {spec!r}")
            if not _NAME.match(name):
                raise UserError(f"--videos {spec!r}: NAME may use letters, digits and _ . + - only")
            if name in seen:
                raise UserError(f"--videos: method name {name!r} given twice")
            seen.add(name)
            if not Path(folder).is_dir():
                raise UserError(f"--videos {name}: not a folder: {folder}")
        check_writable_folder(Path(self.out), "--out")
        if self.prompts is not None and not Path(self.prompts).is_file():
            raise UserError(f"--prompts not found: {self.prompts}")
        for name in ("clip_checkpoint", "i3d", "lora", "neg_lora"):
            p = getattr(self, name)
            if p is not None and not Path(p).exists():
                raise UserError(f"--{name.replace('_', '-')} not found: {p}")
        if self.workers < 1:
            raise UserError("--workers must be at least 1")
        if self.flow_side < 16:
            raise UserError("--flow-side must be at least 16")
        if self.sample_fps <= 0:
            raise UserError("--sample-fps must be positive")
        if self.clip_frames < 0:
            raise UserError("--clip-frames must be 0 (every frame) or positive")
        if self.bootstrap < 100:
            raise UserError("--bootstrap must be at least 100 resamples")
        if self.strip_videos < 0:
            raise UserError("--strip-videos must not be negative")
        if self.beta <= 0:
            raise UserError("--beta must be positive")
        if self.pairs:
            self.validate_model_options()
            if self.lora is None:
                raise UserError("--pairs (pref_accuracy) needs --lora: the trained policy's LoRA folder")
            if not _NAME.match(self.pref_name):
                raise UserError("--pref-name may use letters, digits and _ . + - only")
            if self.negatives < 1 or self.round < 1 or self.pref_timesteps < 1:
                raise UserError("--negatives, --round and --pref-timesteps must be at least 1")
            if not 0 <= self.t_min < self.t_max <= 1:
                raise UserError("--t-min and --t-max must satisfy 0 <= t-min < t-max <= 1")
            if self.round > 1 and self.neg_lora is None:
                raise UserError("--round 2 or later: give --neg-lora, the LoRA that generated those negatives")
            self.validate_negative_options()
        elif self.lora is not None or self.model is not None:
            raise UserError("--model and --lora are used by pref_accuracy, which needs --pairs")
