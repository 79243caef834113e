"""Validate the motion lab's tracker on rendered clips at scale (tests/test_realdpo/lab/test_lab_tracker.py runs a
smaller version).

For each kind (physical and the three unreal kinds) it scores N clips straight from the renderer and the same clips
after the H.264 round trip the real set takes (crf 12, as `realdpo lab render` writes them), and prints the share
called physical / unreal, the share passing the render checks, and which checks fired. The acceptance rule:
100 % of physical clips called physical, >= 95 % of each unreal kind flagged (by the motion checks: the unreal kinds
change motion only). Last line: `tracker physical=<%> unreal_min=<%>`.

    python bench/lab_tracker.py [--n 500]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realbase.video import decode_frames, encode_mp4  # noqa: E402
from realdpo.lab.tracker import CHECKS, score_video  # noqa: E402
from realdpo.lab.world import FPS, KINDS, derive_seed, render_clip  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="clips per kind (default 500)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    rows = {}
    print(f"{'kind':10s} {'source':5s} {'called right':>12s}  checks that fired (% of clips)")
    for kind in KINDS:
        for source in ("raw", "mp4"):
            right, rendered, fired = 0, 0, Counter()
            for i in range(args.n):
                frames = render_clip(derive_seed("tracker-bench", kind, i), kind).frames
                if source == "mp4":
                    frames = decode_frames(encode_mp4(frames, FPS, crf=12))
                s = score_video(frames)
                right += s.physical == (kind == "physical")
                rendered += s.render_pass
                fired.update(s.failed)
            rate = 100.0 * right / args.n
            rows[(kind, source)] = rate
            checks = ", ".join(f"{c} {100 * fired[c] / args.n:.1f}" for c in CHECKS if fired[c])
            print(f"{kind:10s} {source:5s} {rate:11.1f}%  render pass {100 * rendered / args.n:.1f}%; {checks}",
                  flush=True)
    physical = min(rows[("physical", s)] for s in ("raw", "mp4"))
    unreal = min(v for (k, _), v in rows.items() if k != "physical")
    print(f"{len(KINDS) * 2 * args.n} clips in {time.perf_counter() - started:.0f} s")
    print(f"tracker physical={physical:.1f} unreal_min={unreal:.1f}")
    return {f"{k}/{s}": v for (k, s), v in rows.items()}


if __name__ == "__main__":
    main()
