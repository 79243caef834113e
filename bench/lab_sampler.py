"""Sample a lab model with several sampler settings on a validation seed of the held-out set (seed 1 by default,
never the reported prompts' seed 0) and score each with the lab's tracker: how the experiment's sampler
(`SAMPLE_STEPS`, `SAMPLE_GUIDANCE` in realdpo/lab/model.py) was chosen.

A setting is SAMPLER:STEPS:GUIDANCE, SAMPLER one of `default` (the model's DDIM scheduler) or `multistep` (the
family's multistep solver). `--lora NAME=DIR` (repeatable) also samples the model with each LoRA loaded (e.g. the SFT
control's runs), so a setting can be judged on what post-training gains under it, not only on the base; each LoRA's
row then also holds its paired gain over the base (same prompts and sampler seeds) with a 95 % bootstrap interval.
Writes bench/results/lab_acceptance/sampler.json (or --out); one line per model and setting.

    python bench/lab_sampler.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from motion_lab import paired_difference  # noqa: E402

from realdpo.lab.evaluate import generate_videos, heldout_prompts, summarize  # noqa: E402
from realdpo.lab.model import lab_model_path  # noqa: E402
from realdpo.lab.tracker import score_video  # noqa: E402
from realdpo.models import load_spec  # noqa: E402
from realdpo.models.common import quiet_progress  # noqa: E402

SETTINGS = ("default:20:1", "default:50:1", "multistep:20:1", "default:20:2", "default:20:3", "default:20:4",
            "default:20:6", "multistep:20:3")


def parse_setting(text: str) -> tuple[str, int, float]:
    parts = text.split(":")
    try:
        sampler, steps, guidance = parts[0], int(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        raise SystemExit(f"Error: {text}: expected SAMPLER:STEPS:GUIDANCE, e.g. default:20:2") from None
    if len(parts) != 3 or sampler not in ("default", "multistep"):
        raise SystemExit(f"Error: {text}: expected SAMPLER:STEPS:GUIDANCE with SAMPLER default or multistep")
    return sampler, steps, guidance


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="lab pipeline folder (default: the committed one)")
    ap.add_argument("--seed", type=int, default=1, help="held-out set seed (the reported prompts use 0)")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lab_acceptance" / "sampler.json")
    ap.add_argument("--lora", action="append", default=[], help="NAME=DIR: also sample with this LoRA loaded")
    ap.add_argument("settings", nargs="*", default=list(SETTINGS), help="SAMPLER:STEPS:GUIDANCE ...")
    args = ap.parse_args(argv)
    settings = [parse_setting(s) for s in args.settings]
    torch.set_num_threads(args.threads)
    model = args.model or lab_model_path()
    with quiet_progress():
        spec = load_spec(model)
    prompts = heldout_prompts(args.prompts, args.seed)
    loras = [("base", None)]
    for item in args.lora:
        name, _, folder = item.partition("=")
        if not name or not folder or not Path(folder).is_dir():
            raise SystemExit(f"Error: --lora {item}: expected NAME=DIR with DIR a LoRA folder")
        loras.append((name, folder))
    rows = []
    for name, lora in loras:
        if lora is not None:
            from realdpo.generation.sampling import load_lora

            with quiet_progress():
                spec = load_spec(model)
            load_lora(spec, Path(lora))
        for sampler, steps, guidance in settings:
            t0 = time.perf_counter()
            with quiet_progress():
                videos = generate_videos(spec, prompts, steps=steps, guidance=guidance, sampler=sampler)
            scores = [score_video(v) for v in videos]
            s = summarize(scores)
            row = {"model": name, "lora": lora, "sampler": sampler, "steps": steps, "guidance": guidance,
                   "seconds": round(time.perf_counter() - t0, 1), **s, "physical": [int(v.physical) for v in scores]}
            gain = ""
            if lora is not None:
                base = rows[settings.index((sampler, steps, guidance))]  # the base's rows come first
                row["gain"] = paired_difference([(row["physical"], base["physical"])])
                gain = f" (gain over base {row['gain']['points']:+.1f} [{row['gain']['ci'][0]:+.1f}, " \
                       f"{row['gain']['ci'][1]:+.1f}])"
            rows.append(row)
            print(f"{name}: {sampler} {steps} steps guidance {guidance:g}: physical {s['physical_rate']:.1f} %{gain}, "
                  f"render pass {s['render_pass']:.1f} %, residual median {s['residual_px']['median']:.3f} px; failed "
                  + ", ".join(f"{c} {v:.1f}" for c, v in s["failed"].items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(json.dumps({"model": str(model), "heldout_seed": args.seed, "prompts": args.prompts,
                               "threads": torch.get_num_threads(), "settings": rows}, indent=1))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
