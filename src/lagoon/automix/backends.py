"""Where AutoMixer's training runs execute: a local process pool, or Ray (a local instance or a cluster).

Both take `RunSpec`s and yield ``(spec, result)`` pairs as runs finish, so the caller records each result
the moment it exists (an interrupted sweep keeps everything that finished). Every result is also written
to ``RUN_DIR/automix_result.json`` (atomically) by the caller via `record_result`; runs that already have
one are never submitted again.

Process pool: ``spawn`` workers (no forked torch state), each training one run at a time with
`threads_per_worker` torch threads. Ray: one task per run reserving `threads_per_worker` CPUs; with
``ray_address`` empty a local Ray instance with ``workers × threads_per_worker`` CPUs is started (and shut
down afterwards), otherwise the driver joins that cluster, whose nodes must see the same output directory
and shard set (shared storage) and have lagoon installed.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lagoon.automix.config import AutomixConfig
from lagoon.automix.runs import RunSpec, train_run
from lagoon.errors import LagoonError
from lagoon.processes import exit_with_parent

RESULT_FILE = "automix_result.json"


def read_result(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def record_result(run_dir: str | Path, result: dict[str, Any]) -> None:
    """Write a run's result atomically: it exists completely or not at all."""
    path = Path(run_dir) / RESULT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(json.dumps(result, indent=1))
    staging.replace(path)


def execute(specs: list[RunSpec], config: AutomixConfig) -> Iterator[tuple[RunSpec, dict[str, Any]]]:
    """Train `specs` on the configured backend, yielding each as it finishes (in completion order)."""
    if not specs:
        return iter(())
    if config.backend == "ray":
        return _ray(specs, config)
    return _process_pool(specs, config)


def _failure(spec: RunSpec, error: BaseException) -> LagoonError:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    return LagoonError(f"{spec.name} failed ({type(error).__name__}: {message}); see {spec.run_dir}/train.log")


def _process_pool(specs: list[RunSpec], config: AutomixConfig) -> Iterator[tuple[RunSpec, dict[str, Any]]]:
    context = multiprocessing.get_context("spawn")
    # Each worker exits on its own if this driver dies (lagoon.processes): no proxy trains on for nobody.
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=min(config.workers, len(specs)), mp_context=context,
                                                  initializer=exit_with_parent, initargs=("its AutoMixer driver",))
    try:
        futures = {pool.submit(train_run, spec): spec for spec in specs}
        for future in concurrent.futures.as_completed(futures):
            spec = futures[future]
            try:
                result = future.result()
            except LagoonError as error:
                raise LagoonError(f"{spec.name}: {error}") from None
            except Exception as error:  # a worker crash is reported as the run that caused it
                raise _failure(spec, error) from error
            yield spec, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ray(specs: list[RunSpec], config: AutomixConfig) -> Iterator[tuple[RunSpec, dict[str, Any]]]:
    try:
        import ray
    except ImportError:
        raise LagoonError("automix.backend = \"ray\" needs Ray: pip install 'lagoon[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        if config.ray_address:
            ray.init(address=config.ray_address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=config.workers * config.threads_per_worker, include_dashboard=False,
                     log_to_driver=False)
    remote = ray.remote(num_cpus=config.threads_per_worker, max_retries=0)(train_run)
    queue = list(specs)
    in_flight: dict[Any, RunSpec] = {}
    try:
        while queue or in_flight:
            while queue and len(in_flight) < config.workers:
                spec = queue.pop(0)
                in_flight[remote.remote(spec)] = spec
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for reference in done:
                spec = in_flight.pop(reference)
                try:
                    result = ray.get(reference)
                except ray.exceptions.RayTaskError as error:
                    cause = error.cause if getattr(error, "cause", None) is not None else error
                    if isinstance(cause, LagoonError):
                        raise LagoonError(f"{spec.name}: {cause}") from None
                    raise _failure(spec, cause) from error
                yield spec, result
    finally:
        for reference in in_flight:  # interrupted or failed: stop what is still running
            ray.cancel(reference, force=True)
        if started_here:
            ray.shutdown()
