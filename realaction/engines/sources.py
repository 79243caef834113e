"""Where per-source work runs, picked by --engine: worker processes of our own pool (one source per task, a dead
worker costs one source) or Ray tasks; results come back as sources finish."""

from __future__ import annotations

import os
from typing import Callable, Iterator

from realaction.config import CurateConfig
from realaction.curator import Curator, Models
from realaction.decoding.probe import Source
from realaction.engines.process_pool import ProcessPool, WorkerDied
from realaction.engines.source_tasks import init_pool_worker, run_in_pool_worker, worker_died_row
from realaction.output.samples import SourceResult

IN_PROCESS_ENV = "REALACTION_IN_PROCESS"

# -- where the per-source work runs -------------------------------------------------------------------------


def uses_pool(cfg: CurateConfig, n_sources: int) -> bool:
    """Whether sources run in worker processes: always, even with one worker, so that a native crash (a decoder
    or OpenCV segfault on a hostile file) takes one source with it, not the run. REALACTION_IN_PROCESS=1 runs
    them in this process instead, for debugging (bench/isolation.py measures what the worker costs)."""
    return cfg.engine == "ray" or os.environ.get(IN_PROCESS_ENV) != "1"


def run_sources(sources: list[Source], cfg: CurateConfig, models: Models | None,
                progress: Callable[[int, int], None]) -> Iterator[SourceResult]:
    """Results as sources finish, from worker processes (ours or Ray's). A source whose worker dies is an
    `error: worker died` result; the run goes on with a new worker."""
    if cfg.engine == "ray":
        from realaction.engines.ray_engine import run_on_ray

        yield from run_on_ray(sources, cfg, progress)
        return
    if not uses_pool(cfg, len(sources)):
        curator = Curator(cfg, models or Models.of(cfg), progress)
        previous = None
        for source in sources:
            result = curator.run(source)  # the previous source's clips finish encoding meanwhile
            if previous is not None:
                yield previous.resolve()
            previous = result
        if previous is not None:
            yield previous.resolve()
        return
    pool = ProcessPool(min(cfg.workers, len(sources)), init_pool_worker, (cfg,), run_in_pool_worker, on_event=progress)
    for outcome in pool.run(sources):
        source = outcome.item
        if isinstance(outcome.error, WorkerDied):
            yield worker_died_row(source, str(outcome.error))
        elif outcome.error is not None:
            yield SourceResult({"source": source.rel, "source_id": source.source_id, "status": "error",
                                "reason": str(outcome.error)})
        else:
            yield outcome.result
