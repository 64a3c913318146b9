"""Expert parallelism through the engine: `lagoon train` under torchrun (gloo) with ``parallel.ep``, on the
scaled-down model with every Laguna XS.2 feature (tests/train/test_engine_layouts.py), 4 routed experts top-2.

Three launches of 4 ranks, each checked against one process over the same STEPS steps:
- EP = 4 (one expert per rank) is killed with SIGKILL after step KILL_AFTER_STEP and resumes from its step
  CHECKPOINT bit for bit (the steps the killed run logged past its checkpoint come out the same); its losses
  match one process within LOSS_TOLERANCE and its last checkpoint's correction biases equal bit for bit.
- Its step-CHECKPOINT checkpoint resumes at EP = 2 under HSDP (2 replicas × 2 EP ranks of two experts, the
  XS.2 recipes' layout: EP within a replica), again like one process; the SDC checkpoint digest re-verifies
  across the change of EP.
- The EP checkpoint loads in one process: `lagoon export hf`, and the serving engine, give the same model.
- Expert-weight bytes per rank (the trainer's own measurement at step 1) are 1/dp_shard of one process's; the
  expert load imbalance (per layer, per EP rank) reaches metrics.jsonl (the report draws it:
  tests/report/test_expert_load.py).
- `ep` that divides neither the world size nor the experts: one line, exit 2, no run directory.

What the engine's other EP layouts add is checked where it is cheaper, in one 4-rank job of
tests/parallel/test_expert.py: EP = 2 with each EP rank's experts FSDP2-sharded over the other two ranks
(dp_shard_mod_ep = 2: the engine's own `parallelize`, loading, the gather and the experts gathered for compute;
distributed Muon's ``fsdp2`` mode on that layout; a DCP checkpoint from EP = 4 loaded at EP = 2; the backward
when some experts receive no tokens, which once hung the engine).

STEPS = 20 (a checkpoint at 10, the kill after 14), as in the engine's layout tests: the correction biases
move at every step and a layout's arithmetic differs from the first update on. Most of each launch is start-up
(~34 s for five processes importing torch at load ~10, against ~0.8 s a step), so the steps cost little; the one
failure that took many steps to appear (a rank whose experts the router stopped choosing) is set up directly in
tests/parallel/test_expert.py.

Tolerance: EP computes the same float32 arithmetic as one process in a different order only — an expert's GEMM
also holds other ranks' rows and its weight gradient sums every rank's tokens in one GEMM (the bound and its
derivation: tests/parallel/test_expert.py, ≈ 9·10⁻⁵ relative per step at these widths); the rest is FSDP2's
reduction order, as in every sharded layout. LOSS_TOLERANCE (1e-4, tests/train/test_engine_layouts.py) covers
both; measured: ≤ 1.2e-6 over 20 steps (≤ 6e-7 over 8). The correction biases move by ±γ from integer
expert counts summed over every rank, so the same routing gives the same biases exactly, whatever the layout.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from lagoon.config import LagoonConfig
from lagoon.configio import from_dict
from lagoon.sdc.events import read_events
from lagoon.train import run_training
from tests.conftest import ROOT
from tests.train.conftest import losses, write_config
from tests.train.test_engine_layouts import (
    LOSS_TOLERANCE, XS2_SMALL, _command, _env, _kill_tree, _logged_steps, _run,
)
from tests.train.test_engine_layouts import _config as _layout_config

STEPS, CHECKPOINT, KILL_AFTER_STEP = 20, 10, 14
EP4 = {"dp_replicate": 1, "dp_shard": -1, "ep": 4}           # 4 ranks, one expert each
HSDP_EP2 = {"dp_replicate": 2, "dp_shard": 2, "ep": 2}        # 2 replicas × 2 EP ranks of two experts
BIAS = "e_score_correction_bias"


def _config(shard_dir: Path, parallel: dict) -> dict:
    config = _layout_config(shard_dir, parallel)
    config["train"].update(steps=STEPS, checkpoint_every=CHECKPOINT)
    return config


def _run_and_kill(config_path: Path, run_dir: Path) -> list[tuple[int, float]]:
    """Start a 4-rank run, SIGKILL every process of it once step KILL_AFTER_STEP is logged; the losses it logged."""
    process = subprocess.Popen(_command(config_path, run_dir, 4), cwd=ROOT, env=_env(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while _logged_steps(run_dir) < KILL_AFTER_STEP:
            assert process.poll() is None, f"the run ended (exit {process.returncode}) before it could be killed"
            time.sleep(0.02)
    finally:
        _kill_tree(process)
    logged = losses(run_dir)
    assert logged[-1][0] < STEPS, "the run finished before it was killed"
    return logged


@pytest.fixture(scope="module")
def reference_run(shard_dir, tmp_path_factory) -> Path:
    """One process, uninterrupted, in this process (the same code path as the CLI)."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    threads = torch.get_num_threads()
    try:
        run_training(from_dict(LagoonConfig, _config(shard_dir, {})), run_dir)
    finally:
        torch.set_num_threads(threads)
    return run_dir


@pytest.fixture(scope="module")
def ep4_run(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ep4") / "run"


def _step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def _biases(checkpoint: Path) -> dict[str, torch.Tensor]:
    from lagoon.parallel.load import read_dcp_tensors

    found = {name: tensor for name, tensor in read_dcp_tensors(checkpoint) if name.endswith(BIAS)}
    assert len(found) == XS2_SMALL["num_hidden_layers"] - XS2_SMALL["num_dense_layers"], sorted(found)
    return found


def _assert_same_biases(run_dir: Path, reference_run: Path) -> None:
    ours, theirs = _biases(_step_dir(run_dir, STEPS)), _biases(_step_dir(reference_run, STEPS))
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), (name, ours[name], tensor)
    assert any(tensor.abs().sum() > 0 for tensor in theirs.values()), "the biases never moved: nothing compared"


def _first_row(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])


def _check_run(run_dir: Path, reference_run: Path, first_step: int, dp_shard: int, name: str) -> None:
    """Losses from `first_step` on within LOSS_TOLERANCE of one process's, the last checkpoint's correction
    biases equal, expert-weight memory per rank 1/dp_shard of one process's, the load statistics logged."""
    found = losses(run_dir)
    assert [step for step, _ in found] == list(range(first_step, STEPS + 1))
    worst = max(abs(a - b) for (_, a), (_, b) in zip(found, losses(reference_run)[first_step - 1:], strict=True))
    print(f"{name}: largest loss difference from one process over steps {first_step}-{STEPS}: {worst:.2e}")
    assert worst <= LOSS_TOLERANCE, worst
    _assert_same_biases(run_dir, reference_run)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if first_step == 1:   # as the trainer measured it at its first step
        one, ours = _first_row(reference_run)["state_bytes/expert_params"], rows[0]["state_bytes/expert_params"]
        print(f"{name}: expert-weight bytes per rank {ours} of {one} ({ours / one:.3f}x)")
        assert ours * dp_shard == one, (ours, one)
    sparse = range(XS2_SMALL["num_dense_layers"], XS2_SMALL["num_hidden_layers"])
    keys = {"ep_max_load"} | {f"{key}/layer{i}" for i in sparse for key in ("max_load", "ep_max_load")}
    assert all(keys <= set(row) for row in rows if "loss" in row)


@pytest.mark.timeout(900)
def test_ep4_trains_like_one_process_and_resumes_bit_exactly(shard_dir, reference_run, ep4_run, tmp_path):
    config_path = write_config(tmp_path / "run.toml", _config(shard_dir, EP4))
    before_kill = _run_and_kill(config_path, ep4_run)
    assert _step_dir(ep4_run, CHECKPOINT).is_dir()
    stderr = _run(config_path, ep4_run, 4)
    assert f"resuming from step_{CHECKPOINT:08d}" in stderr
    # Bit for bit: the steps the killed run had logged past its checkpoint come out the same after the resume.
    assert losses(ep4_run)[: len(before_kill)] == before_kill and len(before_kill) > CHECKPOINT
    # At the same EP the restored weights were checked against the checkpoint's SDC digest, not waved through.
    assert not [e for e in read_events(ep4_run) if e["event"] == "sdc_digest_layout_changed"]
    _check_run(ep4_run, reference_run, 1, 4, "EP = 4")


@pytest.mark.timeout(600)
def test_an_ep4_checkpoint_resumes_at_ep2_under_hsdp(shard_dir, reference_run, ep4_run, tmp_path):
    source = _step_dir(ep4_run, CHECKPOINT)
    if not source.is_dir():
        pytest.fail("the EP = 4 test writes the checkpoint this one resumes from; run the module")
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    subprocess.run(["cp", "-r", str(source), str(run_dir / "checkpoints")], check=True)
    config_path = write_config(tmp_path / "run.toml", _config(shard_dir, HSDP_EP2))
    stderr = _run(config_path, run_dir, 4)
    assert f"resuming from step_{CHECKPOINT:08d}" in stderr
    _check_run(run_dir, reference_run, CHECKPOINT + 1, 2, "EP = 4 → HSDP 2 × EP 2")
    # The SDC digest of the EP = 4 checkpoint names its EP, so this run (at EP = 2) re-verified it across its
    # replicas instead of refusing it as changed.
    changed = [e for e in read_events(run_dir) if e["event"] == "sdc_digest_layout_changed"]
    assert [(e["stored_ep"], e["ep"]) for e in changed] == [(4, 2)], changed


@pytest.mark.timeout(300)
def test_an_expert_parallel_checkpoint_exports_and_serves_in_one_process(ep4_run, tmp_path):
    """`lagoon export hf` of the EP = 4 checkpoint, and the serving engine loading it directly, hold the same
    weights and generate the same tokens. (The report's drawing of the expert load logged here:
    tests/report/test_expert_load.py.)"""
    from lagoon.infer import Engine as InferEngine
    from lagoon.infer import SamplingParams
    from lagoon.model import from_pretrained

    checkpoint = _step_dir(ep4_run, STEPS)
    if not checkpoint.is_dir():
        pytest.fail("the EP = 4 layout test writes the checkpoint this one exports; run the module")
    from lagoon.cli import main

    assert main(["export", "hf", str(checkpoint), str(tmp_path / "hf")]) == 0
    exported, direct = from_pretrained(tmp_path / "hf"), from_pretrained(checkpoint)
    for name, tensor in direct.state_dict().items():
        assert torch.equal(exported.state_dict()[name], tensor), name
    prompt = list(range(3, 13))
    greedy = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    [served] = InferEngine.from_checkpoint(checkpoint).generate(prompt, greedy)
    [from_export] = InferEngine(exported).generate(prompt, greedy)
    assert served.token_ids == from_export.token_ids and len(served.token_ids) == 12


@pytest.mark.parametrize("world_size, parallel, fragment", [
    (4, {"dp_shard": -1, "dp_replicate": 1, "ep": 3}, "3 does not divide the world size 4"),
    (4, {"dp_shard": -1, "dp_replicate": 1, "ep": 4, "model.num_experts": 6}, "does not divide model.num_experts (6)"),
    (4, {"dp_shard": 2, "dp_replicate": 2, "ep": 4}, "4 does not divide dp_shard (2)"),
    (1, {"ep": 2}, "needs a shard dimension"),
])
def test_a_bad_expert_parallel_degree_is_one_line_before_anything_is_written(world_size, parallel, fragment, shard_dir,
                                                                           tmp_path, monkeypatch, capsys):
    """What every rank of a torchrun job checks before it joins the process group (WORLD_SIZE is all it reads)."""
    from lagoon.cli import main

    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    overrides = [f"parallel.{key}={value}" if "." not in key else f"{key}={value}" for key, value in parallel.items()]
    config_path = write_config(tmp_path / "run.toml", _config(shard_dir, {}))
    run_dir = tmp_path / "run"
    code = main(["train", str(config_path), "--run-dir", str(run_dir), *[a for o in overrides for a in ("--set", o)]])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "parallel.ep" in lines[0] and fragment in lines[0], lines[0]
    assert not run_dir.exists(), "a refused layout must leave no run directory"
