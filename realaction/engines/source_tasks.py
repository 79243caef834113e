"""What a worker process does with sources, for either engine: the local pool's init and work functions, the
Ray task, the error row of a source whose worker died, and the test hook that kills a worker mid-source."""

from __future__ import annotations

import os

from realaction.curator import Curator, Models, config_hash
from realaction.decoding.probe import Source
from realaction.output.samples import SourceResult

TEST_EXIT_ENV = "REALACTION_TEST_EXIT_ON"  # tests: a worker given the source with this relative path dies at once
TEST_CRASH_ENV = "REALACTION_TEST_SEGFAULT_ON"  # tests: ... or crashes in native code (a real SIGSEGV)


def exit_if_asked(source: Source) -> None:
    """Test hook for a worker dying mid-source (as under the OOM killer, or a decoder's segfault); only ever
    called in worker processes."""
    if os.environ.get(TEST_EXIT_ENV) == source.rel:
        os._exit(70)
    if os.environ.get(TEST_CRASH_ENV) == source.rel:
        import ctypes

        ctypes.string_at(0)  # reads address 0: SIGSEGV


def worker_died_row(source: Source, why: str) -> SourceResult:
    return SourceResult({"source": source.rel, "source_id": source.source_id, "status": "error",
                         "reason": f"worker died: {why}"})


# -- the local engine's pool (realaction.engines.process_pool) -----------------------------------------------------

def init_pool_worker(cfg, emit) -> Curator:
    from multiprocessing.util import Finalize

    from realaction.captions.captioners import flush_warnings, quiet_csv_warnings

    quiet_csv_warnings()  # the driver has reported --captions-csv's problems
    Finalize(None, flush_warnings, exitpriority=10)  # "... and N more": run as the worker exits (atexit is not)
    return Curator(cfg, Models.of(cfg), emit)


def run_in_pool_worker(curator: Curator, source: Source) -> SourceResult:
    exit_if_asked(source)
    return curator.run(source).resolve()


# -- the Ray engine's task (realaction.engines.ray_engine) ---------------------------------------------------------

_CURATOR: tuple | None = None  # (config key, Curator), kept by a Ray worker process for its next source


def curate_source_task(cfg, source: Source) -> SourceResult:
    """One source, start to end, in a Ray worker process (which builds its models once per config)."""
    global _CURATOR
    key = (config_hash(cfg), str(cfg.src))
    if _CURATOR is None or _CURATOR[0] != key:
        from realaction.captions.captioners import quiet_csv_warnings

        quiet_csv_warnings()
        _CURATOR = (key, Curator(cfg, Models.of(cfg)))
    exit_if_asked(source)
    return _CURATOR[1].run(source).resolve()
