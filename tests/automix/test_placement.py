"""Where runs go: each Ray task reserves GPUs (Ray's accounting, with GPUs declared on a CPU machine standing
in for real ones) and custom resources; each process-pool worker gets its own GPU, round robin.

No GPU was available where these tests were written: Ray is told the machine has two (``num_gpus=2``) and
does its real bookkeeping (reservations, ``CUDA_VISIBLE_DEVICES`` per task) while the tiny runs train on
the CPU, as a CPU build of torch does whatever ``CUDA_VISIBLE_DEVICES`` says.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import pytest

from lagoon.automix.backends import RESULT_FILE, plan_placement
from lagoon.automix.config import AutomixConfig
from lagoon.errors import LagoonError
from tests.automix.conftest import automix_config, write_config


def test_auto_asks_for_a_gpu_per_run_only_where_runs_train_on_cuda():
    auto = AutomixConfig(workers=3)
    on_gpus = plan_placement(auto, "auto", 3, 2.0, ["0", "1"])
    assert on_gpus.gpus_per_run == 1 and on_gpus.ray_options["num_gpus"] == 1
    assert on_gpus.worker_devices == ["0", "1", "0"]  # round robin, never everyone on cuda:0
    on_cpus = plan_placement(auto, "auto", 3, 0.0, [])
    assert on_cpus.gpus_per_run == 0 and on_cpus.worker_devices == [None, None, None]
    assert plan_placement(auto, "cpu", 2, 8.0, ["0", "1"]).gpus_per_run == 0  # a CPU recipe on a GPU node
    assert plan_placement(auto, "auto", 2, 8.0).ray_options == {"num_cpus": 1, "num_gpus": 1.0, "max_retries": 0}


def test_fractions_custom_resources_and_a_missing_gpu():
    shared = AutomixConfig(gpus_per_run=0.25, threads_per_worker=2, ray_resources={"proxy_slot": 1.0})
    placement = plan_placement(shared, "auto", 4, 1.0)
    assert placement.ray_options == {"num_cpus": 2, "num_gpus": 0.25, "max_retries": 0,
                                     "resources": {"proxy_slot": 1.0}}
    with pytest.raises(LagoonError, match="gpus_per_run"):
        plan_placement(AutomixConfig(), "cuda", 2, 0.0, [])


def placement_config(shard_dir, tmp_path, count, **automix):
    from lagoon.automix.pipeline import prepare
    from lagoon.config import load_config

    tmp_path.mkdir(parents=True, exist_ok=True)
    config = load_config(write_config(tmp_path / "run.toml", automix_config(
        shard_dir, num_proxies=count, proxy={"train": {"steps": 4}}, **automix)))
    return config, prepare(config)


def sweep(config, prepared, out):
    from lagoon.automix.sweep import run_sweep, settle_plan

    out.mkdir()
    plan = settle_plan(out, prepared.plan)
    run_sweep(out, plan, prepared.proxy_config, prepared.proxy_params, config.automix, show_progress=False)
    return [json.loads((out / "proxies" / f"p{i:03d}" / RESULT_FILE).read_text()) for i in range(len(plan.mixtures))]


def most_at_once(results) -> int:
    """The largest number of runs whose [started_at, finished_at] intervals overlap."""
    edges = sorted([(r["started_at"], 1) for r in results] + [(r["finished_at"], -1) for r in results],
                   key=lambda edge: (edge[0], edge[1]))
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.timeout(600)
def test_process_pool_gives_each_worker_its_own_gpu(shard_dir, tmp_path):
    config, prepared = placement_config(shard_dir, tmp_path, 4, workers=2, cuda_devices=["3", "5"])
    results = sweep(config, prepared, tmp_path / "out")
    seen = defaultdict(set)
    for result in results:
        seen[result["pid"]].add(result["cuda_visible_devices"])
    assert all(len(devices) == 1 for devices in seen.values()), seen  # a worker keeps its GPU
    assert set().union(*seen.values()) <= {"3", "5"}
    if len(seen) == 2:  # both workers took runs: they hold different GPUs
        assert set().union(*seen.values()) == {"3", "5"}
    assert os.environ.get("CUDA_VISIBLE_DEVICES") != "3"  # the driver's own view is untouched


@pytest.mark.timeout(900)
def test_ray_tasks_reserve_gpus_and_custom_resources(shard_dir, tmp_path):
    ray = pytest.importorskip("ray")
    # A CPU machine declared to hold 2 GPUs and 1 `proxy_slot`: Ray's accounting is real, the GPUs are not.
    ray.init(num_cpus=4, num_gpus=2, resources={"proxy_slot": 1}, include_dashboard=False, log_to_driver=False)
    try:
        # gpus_per_run auto on a cluster with GPUs: one each, so at most 2 of the 3 run at once, each seeing
        # only the GPU Ray gave it.
        config, prepared = placement_config(shard_dir, tmp_path / "gpus", 3, backend="ray", workers=3)
        results = sweep(config, prepared, tmp_path / "gpus" / "out")
        assert len(results) == 3 and all(0 < r["bpb"]["code"] < 20 for r in results)   # real runs, in Ray workers
        assert all(r["pid"] != os.getpid() for r in results)
        for result in results:
            assert result["worker"].startswith("ray:") and len(result["ray_gpu_ids"]) == 1
            assert result["cuda_visible_devices"] == result["ray_gpu_ids"][0]
            assert result["ray_resources"].get("GPU") == 1
        assert {r["ray_gpu_ids"][0] for r in results} <= {"0", "1"}
        assert most_at_once(results) <= 2
        for a in results:  # runs that overlapped in time held different GPUs
            for b in results:
                if a is not b and a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]:
                    assert a["ray_gpu_ids"] != b["ray_gpu_ids"]

        # A custom resource with room for one: the runs queue instead of overlapping; no GPU asked for.
        config, prepared = placement_config(shard_dir, tmp_path / "slot", 2, backend="ray", workers=2,
                                            gpus_per_run=0, ray_resources={"proxy_slot": 1},
                                            surrogate={"folds": 2})
        results = sweep(config, prepared, tmp_path / "slot" / "out")
        assert all(r["ray_resources"].get("proxy_slot") == 1 and not r["ray_gpu_ids"] for r in results)
        assert most_at_once(results) == 1

        # Asking for more than the machine has fails in one line instead of waiting forever.
        config, prepared = placement_config(shard_dir, tmp_path / "short", 3, backend="ray", gpus_per_run=3)
        with pytest.raises(LagoonError, match="gpus_per_run"):
            sweep(config, prepared, tmp_path / "short" / "out")
    finally:
        ray.shutdown()
