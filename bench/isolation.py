"""What running sources in a worker process costs a one-worker `curate` (the isolation that keeps a native crash
in one source from ending the run): the same footage curated in the main process (REALACTION_IN_PROCESS=1, as
before) and in one spawned worker, interleaved, --repeat times each; medians and their ratio.

    python bench/isolation.py [--src DIR] [--repeat 3]     # default footage: the demo's (realaction.decoding.footage)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from realaction.config import CurateConfig  # noqa: E402
from realaction.decoding.footage import make_demo_footage  # noqa: E402
from realaction.engines.sources import IN_PROCESS_ENV  # noqa: E402
from realaction.pipeline import curate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = args.src or make_demo_footage(Path(tmp) / "footage")
        times: dict[str, list[float]] = {"in-process": [], "one worker process": []}
        for _ in range(args.repeat):
            for mode in times:
                out = Path(tmp) / "out"
                shutil.rmtree(out, ignore_errors=True)
                os.environ[IN_PROCESS_ENV] = "1" if mode == "in-process" else "0"
                t0 = time.perf_counter()
                summary = curate(CurateConfig(src=src, out=out))
                times[mode].append(time.perf_counter() - t0)
        sources = summary["sources"]["total"]
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:>20}: median {med[k]:.2f} s  ({', '.join(f'{x:.2f}' for x in v)})  {sources} sources")
    print(f"ratio={med['one worker process'] / med['in-process']:.3f}")


if __name__ == "__main__":
    main()
