"""Distributed Muon on real gloo process groups: equals single-process Muon, 1/W state, resumes across world sizes.

Each test spawns real processes (torch.distributed, gloo, CPU). Several cases share one process group to
keep the suite fast. The test model has dense and MoE layers; experts 4 and 5 never receive a token, so
their gradients are zero on every rank and the collectives must still match.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lagoon.errors import LagoonError
from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.optim import group_parameters
from lagoon.optim.ownership import assign_owners, blocks_of, imbalance, load_per_rank, make_buckets, shard_rows
from tests.optim.distributed_helpers import (
    DataParallel, build_optimizer, cases_worker, config, local_state_elements, spawn, train_reference,
)

ATOL = 2e-5  # fp32 Newton–Schulz; gradients are summed in a different order than in one process


def _run(world_size: int, cases: list[dict], tmp_path: Path) -> list[list[dict]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    spawn(cases_worker, world_size, cases, str(tmp_path))
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world_size)]


def _assert_close(params: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    assert set(params) >= set(reference)
    for name, expected in reference.items():
        torch.testing.assert_close(params[name], expected, rtol=0, atol=ATOL, msg=name)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_equals_single_process_muon(world_size, tmp_path):
    """DDP and FSDP2 modes, dense and MoE, with and without clipping, reproduce single-process Muon."""
    cases = [dict(optim=config(distributed="ddp"), steps=range(3), max_grad_norm=None, moe=True)]
    if world_size > 1:
        cases.append(dict(optim=config(distributed="fsdp2"), steps=range(3), max_grad_norm=0.5, moe=True))
    if world_size in (2, 4):
        cases += [dict(optim=config(distributed="ddp", ns_coefficients="polar_express"), steps=range(2),
                       max_grad_norm=0.5, moe=False),
                  dict(optim=config(distributed="fsdp2"), steps=range(2), max_grad_norm=None, moe=False)]
    results = _run(world_size, cases, tmp_path)
    for index, case in enumerate(cases):
        reference = train_reference(len(case["steps"]), case["optim"], case["max_grad_norm"], case["moe"])
        rank0 = results[0][index]
        _assert_close(rank0["params"], reference)
        for rank in range(1, world_size):  # every replica / shard agrees on the full parameters
            for name, tensor in results[rank][index]["params"].items():
                assert torch.equal(tensor, rank0["params"][name]), (rank, name)
        if case["max_grad_norm"]:
            assert all(m["clip_coef"] < 1 for m in rank0["metrics"])  # the clipped (recomputed) path ran

        # One state per parameter in the whole job, about 1/W of it on each rank.
        single = local_state_elements(case["optim"], case["moe"])
        per_rank = [results[r][index]["state_elements"] for r in range(world_size)]
        assert single <= sum(per_rank) < single + 2 * world_size, (per_rank, single)  # + ZeRO-1 padding
        assert max(per_rank) <= 1.5 * single / world_size, (per_rank, single)
        # The gathered full state is the same on every rank and has single-process Muon's form.
        state = rank0["state"]
        assert set(state["muon"]) == set(results[-1][index]["state"]["muon"])
        assert all(set(entry) == {"momentum"} for entry in state["muon"].values())


@pytest.mark.timeout(300)
def test_resume_on_a_different_world_size(tmp_path):
    """4 ranks (DDP) save after 2 steps; 2 ranks (FSDP2) load it and continue: same as 3 uninterrupted steps."""
    optim4 = config(distributed="ddp")
    first = _run(4, [dict(optim=optim4, steps=range(2), max_grad_norm=0.5, moe=True, save_at=2)], tmp_path / "four")
    checkpoint = first[0][0]["checkpoint"]
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    checkpoint = torch.load(tmp_path / "checkpoint.pt")
    optim2 = config(distributed="fsdp2")
    second = _run(2, [dict(optim=optim2, steps=range(2, 2), max_grad_norm=0.5, moe=True, resume_from=checkpoint),
                      dict(optim=optim2, steps=range(2, 3), max_grad_norm=0.5, moe=True, resume_from=checkpoint)],
                  tmp_path / "two")
    # Loading and saving again on another world size and mode reproduces the state bit for bit.
    reloaded = second[0][0]["state"]
    assert reloaded["step"] == checkpoint["state"]["step"] == 2
    for section in ("muon", "adamw"):
        for name, entry in checkpoint["state"][section].items():
            for key, tensor in entry.items():
                assert torch.equal(reloaded[section][name][key], tensor), (section, name, key)
    # Continuing gives what one process gets from 3 uninterrupted steps on the same global batches.
    reference = train_reference(3, optim2, 0.5, True)
    _assert_close(second[0][1]["params"], reference)


def _mismatch_worker(rank: int, world_size: int, out: str) -> None:
    model = LagunaForCausalLM(preset_config("tiny", num_hidden_layers=2, vocab_size=64))
    try:
        build_optimizer(model, config(distributed="ddp", lr=0.02 if rank == 0 else 0.03), DataParallel.from_group())
        message = "no error"
    except LagoonError as error:
        message = str(error)
    Path(out, f"rank{rank}.txt").write_text(message)


@pytest.mark.timeout(120)
def test_mismatched_configs_fail_with_a_clear_error(tmp_path):
    spawn(_mismatch_worker, 2, str(tmp_path))
    for rank in range(2):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert "optim.lr" in message and "0.02" in message and "0.03" in message and "rank 1" in message, message


def test_owners_balance_newton_schulz_cost_and_buckets():
    with torch.device("meta"):
        model = LagunaForCausalLM(preset_config("small"))
    blocks = blocks_of(group_parameters(model).muon)
    for world_size in (2, 3, 4, 8):
        owners = assign_owners(blocks, world_size)
        assert set(owners) == set(blocks)
        assert imbalance(load_per_rank(owners, world_size)) <= 1.10
        buckets = make_buckets(blocks, owners, world_size, 2**20)
        placed = [b for bucket in buckets for segment in bucket.segments for b in segment]
        assert sorted(placed, key=blocks.index) == blocks  # every block in exactly one bucket
        for bucket in buckets:
            assert all(owners[b] == rank for rank, segment in enumerate(bucket.segments) for b in segment)
            assert len({(b.rows, b.cols) for segment in bucket.segments for b in segment}) == 1
        sizes = [bucket.padded_elements for bucket in buckets]
        assert sizes == sorted(sizes)  # smallest first
    # Cost is P²Q, not elements: a square matrix outweighs a wide one of equal size.
    square, wide = blocks_of([type("M", (), {"count": 1, "rows": 64, "cols": 64})(),
                              type("M", (), {"count": 1, "rows": 16, "cols": 256})()])
    assert square.cost > 2 * wide.cost
    assert [shard_rows(10, 4, r) for r in range(4)] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert shard_rows(4, 3, 2) == (4, 4)
    assert math.isclose(imbalance([1, 1, 1, 1]), 1.0)
