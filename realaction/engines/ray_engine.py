"""`realdpo curate --engine ray`: each source is one Ray task; this process (the driver) commits the results.

Ray is used as a library: `ray.remote` tasks, `ray.wait` for whichever finishes first, the object store to bring
each source's encoded clips back. The driver stays the one writer of shards, manifest and sources (the same
`ShardCommitter` as `--engine local`), so the guarantees are the same: a killed driver loses only sources not yet
committed, which the next run redoes. Tasks run with `max_retries=0`: a source whose worker dies (a crash, Ray's
OOM killer, a killed node) is recorded as `error: worker died`, not retried forever; the next run retries it once,
as it does every error.

Each Ray worker process builds its curator and models once and keeps them for the next source (keyed by the
config). At most twice the cluster's CPU count of sources are in flight, since each result carries encoded clips.

On a cluster: every node needs realdpo installed and `--src` at the same path (a shared file system); `--out`
is only written by the driver.
"""

from __future__ import annotations

import logging
import socket
from contextlib import contextmanager
from typing import Callable, Iterator

from realaction.decoding.probe import Source
from realaction.engines.source_tasks import curate_source_task, worker_died_row
from realaction.options import EngineOptions
from realaction.output.samples import SourceResult
from realbase.errors import UserError, one_line

CONNECT_TIMEOUT_S = 5.0


def _check_reachable(address: str) -> None:
    """Fail fast where Ray itself would retry for minutes: a host:port that nothing answers on."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not port.isdigit():
        return  # "auto" and the like: Ray answers these quickly
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UserError(f"--ray-address {address}: nothing answers there ({e.strerror or e})") from None


@contextmanager
def ray_session(options: EngineOptions) -> Iterator[None]:
    """Join the cluster at --ray-address, or start a local Ray with --workers CPUs (and stop it at the end).
    A Ray already initialised in this process (a notebook, a test) is used as it is."""
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs the ray package: pip install 'realdpo[ray]'") from None
    if options.ray_address:
        _check_reachable(options.ray_address)
    if ray.is_initialized():
        yield
        return
    where = f"the Ray cluster at {options.ray_address}" if options.ray_address else "a local Ray instance"
    try:
        ray.init(address=options.ray_address, num_cpus=None if options.ray_address else options.workers,
                 include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    except Exception as e:  # ConnectionError, ValueError, RuntimeError, ... for a wrong address or a failed start
        raise UserError(f"--engine ray: cannot start or reach {where}: {one_line(e)}") from None
    try:
        yield
    finally:
        ray.shutdown()


def run_on_ray(sources: list[Source], cfg, progress: Callable[[int, int], None]) -> Iterator[SourceResult]:
    """Results as sources finish, inside `ray_session(cfg)`."""
    import ray
    from ray.exceptions import RayError, RayTaskError, WorkerCrashedError

    task = ray.remote(num_cpus=1, max_retries=0)(curate_source_task)
    pending: dict = {}  # task -> its source
    try:
        cfg_ref = ray.put(cfg)
        width = max(1, int(ray.cluster_resources().get("CPU", 1)))
        todo = list(reversed(sources))
        while todo or pending:
            while todo and len(pending) < 2 * width:
                source = todo.pop()
                pending[task.remote(cfg_ref, source)] = source
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                source = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except WorkerCrashedError as e:
                    result = worker_died_row(source, one_line(e, 200))
                except RayTaskError as e:  # the task raised (the curator catches a source's own failures)
                    cause = e.cause if isinstance(e.cause, BaseException) else e
                    result = SourceResult({"source": source.rel, "source_id": source.source_id, "status": "error",
                                           "reason": f"{type(cause).__name__}: {one_line(cause, 200)}"})
                except RayError as e:  # out of memory, a node lost, a task that could not be run
                    result = worker_died_row(source, f"{type(e).__name__}: {one_line(e, 200)}")
                progress(int(result.row.get("frames_decoded", 0)), len(result.clips))
                yield result
    finally:  # on Ctrl-C or an error: the sources in flight are redone by the next run
        for ref in pending:
            ray.cancel(ref, force=True)
