"""Where in the sampling chain does a lab model lose the balls? A diagnostic for the motion lab's base model.

For held-out clips it encodes the true clip, noises it to the first of the last `strength` of the sampler's
timesteps (SDEdit: the pipeline's own sampler with `init_latents`, the same first frame and caption) and lets the
model denoise from there. strength 1.0 is plain sampling from noise; strength 0 (always printed first) is the clip's
VAE reconstruction, with no model step. A model that keeps the balls from strength s on, but not from higher noise, loses
them in the high-noise steps that lay the trajectory out. Prints, per strength, the lab's metrics: physical rate,
consistent frames, balls found (realdpo.lab.tracker), and the failed checks. The validation draw (held-out seed 1)
is not the experiment's prompts.

    python bench/lab_sdedit.py [--model DIR] [--lora DIR] [--prompts 32] [--strengths 0.2 0.4 0.6 0.8 1.0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realdpo.lab.evaluate import generate_videos, heldout_prompts, score_videos  # noqa: E402
from realdpo.lab.model import SAMPLE_GUIDANCE, SAMPLE_STEPS, lab_model_path  # noqa: E402
from realdpo.lab.sets import set_clip  # noqa: E402
from realdpo.models.frames import to_tensor, to_uint8  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    import torch

    from realdpo.generation.sampling import load_lora
    from realdpo.models import load_spec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="lab model folder (default: the committed one)")
    ap.add_argument("--lora", type=Path, default=None, help="a LoRA folder to load into it")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1, help="held-out draw (the experiment's prompts are seed 0)")
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8, 1.0])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = load_spec(args.model or lab_model_path())
    if args.lora:
        load_lora(spec, args.lora)
    prompts = heldout_prompts(args.prompts, seed=args.seed)
    clips = torch.stack([to_tensor(set_clip("heldout", i, args.seed).frames) for i in range(args.prompts)])
    init = torch.cat([spec.encode_videos(clips[i:i + 16]) for i in range(0, len(clips), 16)])
    rows = []
    print(f"{'strength':>8s} {'physical':>9s} {'consistent':>11s} {'balls found':>12s}  failed checks (% of videos)")
    for strength in [0.0, *args.strengths]:  # 0.0: the clips' VAE reconstructions, no model step
        t0 = time.perf_counter()
        if strength:
            videos = generate_videos(spec, prompts, steps=SAMPLE_STEPS, guidance=SAMPLE_GUIDANCE, strength=strength,
                                     init_latents=None if strength >= 1.0 else init)
        else:
            videos = np.stack([to_uint8(v) for v in spec.decode_latents(init)])
        s = score_videos(videos)
        failed = ", ".join(f"{c} {v:.0f}" for c, v in s["failed"].items() if v > 0)
        print(f"{strength:8.2f} {s['physical_rate']:8.1f}% {s['consistent_frames']:10.1f}% {s['balls_found']:11.1f}%  "
              f"{failed}  ({time.perf_counter() - t0:.0f} s)", flush=True)
        rows.append({"strength": strength, **s})
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return {"rows": rows}


if __name__ == "__main__":
    from realbase.errors import UserError

    try:
        main()
    except UserError as e:  # a missing or broken --model / --lora folder: one line, not a traceback
        raise SystemExit(f"lab_sdedit: {e}") from None
