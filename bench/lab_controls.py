"""The motion lab's positive controls (issue 22), run before any DPO arm: can the lab see an effect at all?

1. SFT on the real set (bench/motion_lab.py's `sft` arm, its seeds, steps and held-out prompts) must raise the base
   model's physical rate by `min_sft_gain_points` in every seed. These runs are the experiment's sft arm: the
   experiment reuses them.
2. A lab model built the same way on a physical-only web mix (`realdpo lab build --web-unreal 0`) must reach
   `physical_only_build_min_physical_pct` on the held-out prompts: the transformer can learn physical motion when
   the data shows only that.

Figures from bench/lab_acceptance.json (fixed before the runs); writes bench/results/lab_acceptance/controls.json.
Last line: `controls sft_gains=<a>,<b>,<c> physical_only=<p> pass=<yes|no|incomplete>` (incomplete: no
--physical-only-model was given, so the second control was not run; every control that ran passed).

    python bench/lab_controls.py --workers 2 --physical-only-model lab_model_physical/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import motion_lab  # noqa: E402

from realdpo.lab.evaluate import heldout_prompts  # noqa: E402

CRITERIA = Path(__file__).with_name("lab_acceptance.json")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench_out/motion_lab"), help="the experiment's --out")
    ap.add_argument("--physical-only-model", type=Path, help="a `realdpo lab build --web-unreal 0` folder")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    crit = json.loads(CRITERIA.read_text())["positive_controls"]
    full = motion_lab.FULL
    seeds = full["seeds"][:crit["sft_seeds"]]
    t0 = time.perf_counter()
    motion_lab.main(["--out", str(args.out), "--arms", "sft", "--workers", str(args.workers),
                     "--seeds", *map(str, seeds)])
    out = {"criteria": crit, "seconds": {"sft": round(time.perf_counter() - t0, 1)}}
    n_prompts, n_real = full["prompts"], full["real"]
    base = json.loads((args.out / f"base-{n_prompts}.json").read_text())
    sft = [json.loads((motion_lab.run_dir(args.out, "sft", s, n_real, full["steps"]) / f"heldout-{n_prompts}.json")
                      .read_text()) for s in seeds]
    out["base"] = {k: base[k] for k in ("physical_rate", "render_pass")}
    out["sft"] = [{"seed": r["seed"], "physical_rate": r["physical_rate"], "render_pass": r["render_pass"],
                   "gain_points": r["physical_rate"] - base["physical_rate"]} for r in sft]
    gains = [r["gain_points"] for r in out["sft"]]
    out["pass"] = {"sft": all(g >= crit["min_sft_gain_points"] for g in gains)}
    if args.physical_only_model is not None:
        from realdpo.models import load_spec

        t0 = time.perf_counter()
        scores, _ = motion_lab.evaluate(load_spec(args.physical_only_model), heldout_prompts(n_prompts))
        out["physical_only"] = {k: v for k, v in scores.items() if k != "per_video"}
        out["physical_only"]["model"] = str(args.physical_only_model)
        out["seconds"]["physical_only"] = round(time.perf_counter() - t0, 1)
        out["pass"]["physical_only"] = scores["physical_rate"] >= crit["physical_only_build_min_physical_pct"]
        info = args.physical_only_model / "build_info.json"
        if info.is_file():
            out["physical_only"]["build_info"] = json.loads(info.read_text())
    results = Path(__file__).parent / "results" / "lab_acceptance"
    results.mkdir(parents=True, exist_ok=True)
    path = results / "controls.json"
    tmp = path.with_name(".controls.json.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, path)
    phys = out.get("physical_only", {}).get("physical_rate")
    # a control that did not run has not passed: without the physical-only model the verdict cannot be yes
    verdict = "no" if not all(out["pass"].values()) else "yes" if phys is not None else "incomplete"
    print(f"wrote {path}")
    print(f"controls sft_gains={','.join(f'{g:+.1f}' for g in gains)} "
          f"physical_only={'n/a' if phys is None else f'{phys:.1f}'} pass={verdict}")
    return out


if __name__ == "__main__":
    main()
