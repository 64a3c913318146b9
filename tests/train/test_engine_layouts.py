"""The training engine carries a scaled-down model with every Laguna XS.2 feature through `lagoon train` in every
layout: one process, FSDP2 on 2 ranks, HSDP 2×2 on 4 ranks (gloo).

- The layouts' losses agree within LOSS_TOLERANCE (derived below).
- Each layout resumes bit for bit after SIGKILL: the resumed run's losses equal those the killed run had
  already logged past its checkpoint.
- A checkpoint written by 4 HSDP ranks resumes on 2 FSDP ranks.
- Per-rank parameter + gradient + optimizer bytes at W=4 (FSDP) are ≤ 0.35× those of one process.

Tolerance: every layout computes the same float32 arithmetic except the order of the gradient sums
(reduce-scatter / all-reduce over 2-4 ranks instead of one sum), which changes each gradient element by
a few units of float32 rounding (u = 6e-8, relative). Muon's Newton–Schulz and AdamW's normalisation map
such relative perturbations to updates of the same relative size, so after n steps weights differ by
about n·lr·u·(condition) and the loss by far less than 1e-5 at these widths over 20 steps (measured: ≤ 2e-6).
LOSS_TOLERANCE = 1e-4 leaves an order of magnitude of headroom without hiding a real mismatch: a wrong
gradient scale or a dropped shard moves the first step's loss by > 1e-2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lagoon.config import LagoonConfig
from lagoon.configio import from_dict
from lagoon.train import run_training
from tests.conftest import ROOT
from tests.train.conftest import losses, train_config, write_config

LOSS_TOLERANCE = 1e-4
STEPS, CHECKPOINT = 20, 10
KILL_AFTER_STEP = 13   # SIGKILL once this step is logged: steps 11..13 are then compared with the resumed run

YARN = {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 8.0, "original_max_position_embeddings": 16,
        "beta_fast": 32.0, "beta_slow": 1.0, "partial_rotary_factor": 0.5}
# Dense first layer, sliding/global mix with per-layer head counts, output gate, shared expert, sigmoid router
# with correction bias (every MoE layer), YaRN on the global layers.
XS2_SMALL = {"preset": "tiny", "hidden_size": 48, "head_dim": 12, "num_attention_heads": 4, "num_key_value_heads": 2,
             "num_hidden_layers": 3, "num_dense_layers": 1, "intermediate_size": 64, "moe_intermediate_size": 24,
             "shared_expert_intermediate_size": 20, "num_experts": 4, "num_experts_per_tok": 2, "sliding_window": 8,
             "gating": True, "attention_heads_by_type": {"full_attention": 2, "sliding_attention": 4},
             "rope_parameters": {"full_attention": YARN, "sliding_attention": {"rope_type": "default",
                                                                               "rope_theta": 10000.0}}}
LAYOUTS = {"w1": (1, {}), "fsdp2": (2, {"dp_replicate": 1, "dp_shard": -1}),
           "hsdp2x2": (4, {"dp_replicate": 2, "dp_shard": 2})}


def _config(shard_dir: Path, parallel: dict) -> dict:
    config = train_config(shard_dir, train={"steps": STEPS, "checkpoint_every": CHECKPOINT, "eval_every": 0,
                                            "schedule": "constant", "warmup_fraction": 0.0},
                          data={"seq_len": 32, "global_batch_size": 8}, parallel=parallel)
    config["model"] = dict(XS2_SMALL)
    config["parallel"] = {"activation_checkpointing": "selective", **parallel}
    return config


def _command(config_path: Path, run_dir: Path, ranks: int) -> list[str]:
    lagoon = ["-m", "lagoon", "train", str(config_path), "--run-dir", str(run_dir)]
    if ranks == 1:
        return [sys.executable, *lagoon]
    return [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc-per-node={ranks}", *lagoon]


def _env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts each rank in its own session, so a process group misses them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        found.extend(children.get(frontier[0], []))
        frontier.extend(children.get(frontier.pop(0), []))
    return found


def _kill_tree(process: subprocess.Popen) -> None:
    for pid in [process.pid, *_descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=60)


def _logged_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.endswith("}")]
    return max(steps, default=0)


def _run(config_path: Path, run_dir: Path, ranks: int) -> str:
    result = subprocess.run(_command(config_path, run_dir, ranks), cwd=ROOT, env=_env(), capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def _run_and_kill(config_path: Path, run_dir: Path, ranks: int) -> list[tuple[int, float]]:
    """Start a run, SIGKILL every process of it once step KILL_AFTER_STEP is logged; the losses it logged."""
    process = subprocess.Popen(_command(config_path, run_dir, ranks), cwd=ROOT, env=_env(), start_new_session=True,
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
    import torch

    run_dir = tmp_path_factory.mktemp("reference") / "run"
    threads = torch.get_num_threads()
    try:
        run_training(from_dict(LagoonConfig, _config(shard_dir, {})), run_dir)
    finally:
        torch.set_num_threads(threads)
    return run_dir


@pytest.fixture(scope="module")
def reference(reference_run) -> list[tuple[int, float]]:
    return losses(reference_run)


def _state_bytes(run_dir: Path) -> int:
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    return sum(row[f"state_bytes/{key}"] for key in ("params", "grads", "optimizer"))


@pytest.fixture(scope="module")
def hsdp_run(shard_dir, tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hsdp") / "run"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_trains_like_one_process_and_resumes_bit_exactly(layout, shard_dir, reference, hsdp_run, tmp_path):
    ranks, parallel = LAYOUTS[layout]
    config_path = write_config(tmp_path / "run.toml", _config(shard_dir, parallel))
    run_dir = hsdp_run if layout == "hsdp2x2" else tmp_path / "run"
    before_kill = _run_and_kill(config_path, run_dir, ranks)
    assert (run_dir / "checkpoints" / f"step_{CHECKPOINT:08d}").is_dir()
    stderr = _run(config_path, run_dir, ranks)
    assert f"resuming from step_{CHECKPOINT:08d}" in stderr
    resumed = losses(run_dir)
    assert [step for step, _ in resumed] == list(range(1, STEPS + 1))
    # Bit for bit: the steps the killed run had logged past its checkpoint come out the same after the resume.
    assert resumed[: len(before_kill)] == before_kill
    assert len(before_kill) > CHECKPOINT
    # Across layouts: the same run within the float32 reduction-order tolerance.
    worst = max(abs(a - b) for (_, a), (_, b) in zip(resumed, reference, strict=True))
    print(f"{layout}: largest loss difference from one process over {STEPS} steps: {worst:.2e}")
    assert worst <= LOSS_TOLERANCE, worst


@pytest.mark.timeout(600)
def test_a_four_rank_hsdp_checkpoint_resumes_on_two_fsdp_ranks(shard_dir, reference, hsdp_run, tmp_path):
    source = hsdp_run / "checkpoints" / f"step_{CHECKPOINT:08d}"
    if not source.is_dir():
        pytest.fail("the HSDP layout test writes the checkpoint this one resumes from; run the module")
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    subprocess.run(["cp", "-r", str(source), str(run_dir / "checkpoints")], check=True)
    assert len(list((source / "dcp").glob("*.distcp"))) == 4
    config_path = write_config(tmp_path / "run.toml", _config(shard_dir, LAYOUTS["fsdp2"][1]))
    stderr = _run(config_path, run_dir, 2)
    assert f"resuming from step_{CHECKPOINT:08d}" in stderr
    resumed = losses(run_dir)
    assert [step for step, _ in resumed] == list(range(CHECKPOINT + 1, STEPS + 1))
    for (step, a), (_, b) in zip(resumed, reference[CHECKPOINT:], strict=True):
        assert abs(a - b) <= LOSS_TOLERANCE, (step, a, b)


@pytest.mark.timeout(600)
def test_four_fsdp_ranks_hold_a_third_of_one_process_state(shard_dir, reference_run, tmp_path):
    """Parameters + gradients + optimizer state per rank, as the trainer measures them at its first step, and
    what `lagoon plan` says they are."""
    from lagoon.parallel.plan import state_bytes

    config = _config(shard_dir, {"dp_replicate": 1, "dp_shard": -1})
    config["train"].update(steps=1, checkpoint_at_end=False)
    config_path = write_config(tmp_path / "run.toml", config)
    _run(config_path, tmp_path / "w4", 4)
    one, four = _state_bytes(reference_run), _state_bytes(tmp_path / "w4")
    print(f"per-rank parameter + gradient + optimizer bytes: W=1 {one}, W=4 {four} ({four / one:.3f}x)")
    assert four / one <= 0.35, four / one
    resolved = from_dict(LagoonConfig, config)
    planned = sum(state_bytes(_resolved_model(tmp_path / "w4"), resolved.optim, 4, 4, resolved.optim.distributed))
    assert abs(planned - four) <= 0.15 * four, (planned, four)


def _resolved_model(run_dir: Path):
    """The run's model config as `lagoon train` resolved it (its vocabulary follows the tokenizer)."""
    from lagoon.config import load_config

    return load_config(run_dir / "config.toml").model
