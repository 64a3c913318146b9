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

GPUs (`Placement`): a run trains on ``cuda`` (its device 0) whenever CUDA is visible to it, so placement is a
matter of what each run sees. Ray tasks ask for ``num_gpus`` (``gpus_per_run``); Ray then sets each task's
``CUDA_VISIBLE_DEVICES`` to the GPUs it reserved (a task that asks for none is shown none, which is why a
GPU recipe must ask). The process pool gives worker i the GPU ``cuda_devices[i % len]`` by setting
``CUDA_VISIBLE_DEVICES`` in the worker before CUDA starts, so two workers never pile onto ``cuda:0``.
Every result records what its run saw (``cuda_visible_devices``, Ray's GPU ids) and when it ran.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
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


@dataclass
class Placement:
    """What each run reserves, and (process pool) which GPU each worker gets."""

    gpus_per_run: float
    """Ray's ``num_gpus`` per task (0: CPU only)."""
    worker_devices: list[str | None] = field(default_factory=list)
    """Process pool: the ``CUDA_VISIBLE_DEVICES`` of worker i (None: left as the driver's)."""
    ray_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of ``ray.remote`` for each run."""


def runs_device(specs: list[RunSpec]) -> str:
    """"cpu", "cuda" or "auto": the runs' ``train.device`` (every AutoMixer batch shares one)."""
    devices = {str(spec.config.get("train", {}).get("device", "auto")) for spec in specs}
    assert len(devices) == 1, devices
    return devices.pop()


def visible_cuda_devices() -> list[str]:
    """The driver's GPUs as ``CUDA_VISIBLE_DEVICES`` ids (its own list when set, else 0 … count − 1)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [device.strip() for device in listed.split(",") if device.strip() and device.strip() != "-1"]
    import torch

    # Asking here is harmless: workers are spawned afresh and set their own CUDA_VISIBLE_DEVICES first.
    return [str(index) for index in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def plan_placement(config: AutomixConfig, device: str, workers: int, gpus_available: float,
                   devices: list[str] | None = None) -> Placement:
    """Placement of `workers` concurrent runs whose ``train.device`` is `device`.

    `gpus_available`: GPUs the Ray cluster holds, or (process pool) ``len(devices)``, the GPU ids the
    workers are spread over.
    """
    gpus = config.gpus_per_run
    if gpus < 0:  # auto: a GPU per run where the runs will train on CUDA
        gpus = 1.0 if device == "cuda" or (device == "auto" and gpus_available > 0) else 0.0
    if device == "cpu":
        gpus = 0.0
    worker_devices: list[str | None] = [None] * workers
    if devices is not None and gpus > 0:  # the process pool
        if not devices:
            raise LagoonError(f"automix.gpus_per_run = {gpus:g} but the driver sees no GPU; set "
                              "automix.gpus_per_run = 0 or train.device = \"cpu\" to train on CPUs")
        worker_devices = [devices[i % len(devices)] for i in range(workers)]
    ray_options: dict[str, Any] = {"num_cpus": config.threads_per_worker, "num_gpus": gpus, "max_retries": 0}
    if config.ray_resources:
        ray_options["resources"] = dict(config.ray_resources)
    return Placement(gpus, worker_devices, ray_options)


def _start_worker(devices: Any) -> None:
    """Process-pool initializer: exit on its own if the driver dies (lagoon.processes: no proxy trains on for
    nobody), and take this worker's GPU from the queue before anything touches CUDA."""
    exit_with_parent("its AutoMixer driver")
    device = devices.get()
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device


def _process_pool(specs: list[RunSpec], config: AutomixConfig) -> Iterator[tuple[RunSpec, dict[str, Any]]]:
    context = multiprocessing.get_context("spawn")
    workers = min(config.workers, len(specs))
    device = runs_device(specs)
    devices = [] if device == "cpu" else (list(config.cuda_devices) if config.cuda_devices is not None
                                          else visible_cuda_devices())
    placement = plan_placement(config, device, workers, float(len(devices)), devices)
    slots = context.Queue()
    for worker_device in placement.worker_devices:
        slots.put(worker_device)
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                                  initializer=_start_worker, initargs=(slots,))
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
    in_flight: dict[Any, RunSpec] = {}
    try:
        resources = ray.cluster_resources()
        placement = plan_placement(config, runs_device(specs), config.workers, float(resources.get("GPU", 0.0)))
        wanted = {"GPU": placement.gpus_per_run, **placement.ray_options.get("resources", {})}
        short = {name: amount for name, amount in wanted.items() if amount > resources.get(name, 0.0)}
        if short and not config.ray_address:  # a local instance never grows; a cluster may autoscale
            raise LagoonError(f"each run asks Ray for {short}, more than this machine offers ({resources}); "
                              "lower automix.gpus_per_run or automix.ray_resources")
        remote = ray.remote(**placement.ray_options)(train_run)
        queue = list(specs)
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
