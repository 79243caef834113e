"""Check a lab model against the acceptance figures fixed in bench/lab_acceptance.json (committed before the model
they judge was evaluated).

- VAE: reconstruct `vae.clips` physical clips of the real set (mode of the posterior, through the pipeline's own
  `encode_videos` / `decode_latents`) and score them with the lab's tracker: the physical share must reach
  `min_physical_pct`.
- Base model: sample `base.prompts` held-out prompts at the experiment's sampler and score them: render pass at
  least `min_render_pass_pct`, physical rate inside `physical_pct_range`.

The positive controls (SFT gains, a physical-only build) are separate runs and are not checked here.
Writes bench/results/lab_acceptance/<name>.json (every figure, the distributions, wall times and thread count);
last line: `acceptance vae=<p> render_pass=<r> physical=<q> pass=<yes|no>`.

    nice python bench/lab_acceptance.py --model realdpo/lab/model --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realdpo.lab.evaluate import generate_videos, heldout_prompts, summarize  # noqa: E402
from realdpo.lab.model import SAMPLE_GUIDANCE, SAMPLE_STEPS  # noqa: E402
from realdpo.lab.sets import set_clip  # noqa: E402
from realdpo.lab.tracker import score_video  # noqa: E402
from realdpo.models import load_spec  # noqa: E402
from realdpo.models.frames import to_uint8  # noqa: E402

CRITERIA = Path(__file__).with_name("lab_acceptance.json")


@torch.no_grad()
def vae_reconstructions(spec, clips: int, seed: int) -> dict:
    scores = []
    for start in range(0, clips, 8):
        batch = [set_clip("real", i, seed).frames for i in range(start, min(start + 8, clips))]
        video = torch.from_numpy(np.stack(batch)).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
        recon = spec.decode_latents(spec.encode_videos(video))
        scores += [score_video(to_uint8(v)) for v in recon]
    return summarize(scores)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="lab pipeline folder (save_pretrained)")
    ap.add_argument("--name", default=None, help="results file name (default: the model folder's name)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)
    crit = json.loads(CRITERIA.read_text())
    torch.set_num_threads(args.threads)
    spec = load_spec(args.model)
    out = {"model": str(args.model), "criteria": crit, "sampler": {"steps": SAMPLE_STEPS, "guidance": SAMPLE_GUIDANCE},
           "threads": torch.get_num_threads(), "seconds": {}}

    t0 = time.perf_counter()
    out["vae"] = vae_reconstructions(spec, crit["vae"]["clips"], crit["vae"]["set_seed"])
    out["seconds"]["vae"] = round(time.perf_counter() - t0, 1)
    print(f"VAE: {out['vae']['physical_rate']:.1f} % of {crit['vae']['clips']} reconstructed physical clips pass "
          f"({out['seconds']['vae']} s)", flush=True)

    t0 = time.perf_counter()
    prompts = heldout_prompts(crit["base"]["prompts"], crit["base"]["heldout_seed"])
    videos = generate_videos(spec, prompts, steps=SAMPLE_STEPS, guidance=SAMPLE_GUIDANCE, batch_size=args.batch_size)
    out["base"] = summarize([score_video(v) for v in videos])
    out["seconds"]["base"] = round(time.perf_counter() - t0, 1)
    b = out["base"]
    print(f"base: render pass {b['render_pass']:.1f} %, physical {b['physical_rate']:.1f} % on "
          f"{crit['base']['prompts']} prompts; failed {b['failed']} ({out['seconds']['base']} s)", flush=True)

    lo, hi = crit["base"]["physical_pct_range"]
    out["pass"] = {"vae": out["vae"]["physical_rate"] >= crit["vae"]["min_physical_pct"],
                   "render_pass": b["render_pass"] >= crit["base"]["min_render_pass_pct"],
                   "physical": lo <= b["physical_rate"] <= hi}
    ok = all(out["pass"].values())
    results = Path(__file__).parent / "results" / "lab_acceptance"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{args.name or args.model.resolve().name}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, path)
    print(f"wrote {path}")
    print(f"acceptance vae={out['vae']['physical_rate']:.1f} render_pass={b['render_pass']:.1f} "
          f"physical={b['physical_rate']:.1f} pass={'yes' if ok else 'no'}")
    return out


if __name__ == "__main__":
    main()
