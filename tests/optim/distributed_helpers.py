"""Real multi-process runs for the distributed-Muon tests: gloo ranks on CPU, results written to files.

`spawn(worker, world_size, *args)` starts `world_size` processes that join one gloo group and call
``worker(rank, world_size, *args)``; `train_reference` is single-process Muon on the whole global batch,
the baseline every distributed run must reproduce.
"""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.optim import DataParallel, OptimConfig, build_optimizer

SEQ, GLOBAL_BATCH, VOCAB = 8, 12, 128  # the global batch divides evenly over 1–4 ranks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, worker, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=120))
    try:
        worker(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def spawn(worker, world_size: int, *args) -> None:
    mp.spawn(_entry, args=(world_size, free_port(), worker, args), nprocs=world_size, join=True)


def make_model(moe: bool = True) -> LagunaForCausalLM:
    """A small Laguna (MoE or dense) whose last two experts never receive a token."""
    torch.manual_seed(0)
    overrides = dict(num_hidden_layers=2, vocab_size=VOCAB, hidden_size=48, head_dim=16, num_attention_heads=3,
                     num_key_value_heads=1, attention_heads_by_type={}, intermediate_size=80, moe_intermediate_size=24,
                     shared_expert_intermediate_size=24, num_experts=6, num_experts_per_tok=2)
    if not moe:
        overrides["num_dense_layers"] = 2
    model = LagunaForCausalLM(preset_config("tiny", **overrides))
    with torch.no_grad():
        for block in model.moe_blocks():
            block.gate.e_score_correction_bias[-2:] = -1e4  # experts 4 and 5: no tokens, zero gradients
    return model


def batch(step: int, world_size: int = 1, rank: int = 0) -> torch.Tensor:
    """Rank `rank`'s slice of the global batch of `step` ([GLOBAL_BATCH, SEQ] token ids, the same for any W)."""
    generator = torch.Generator().manual_seed(1000 + step)
    rows = GLOBAL_BATCH // world_size
    return torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=generator)[rank * rows : (rank + 1) * rows]


def config(**overrides) -> OptimConfig:
    # AdamW divides by √v + ε: with ε = 1e-8 an embedding row whose summed gradient nearly cancels turns
    # the different summation order of W ranks into 1e-5-sized differences; 1e-6 keeps the comparison tight.
    base = dict(lr=0.02, adamw_lr=0.01, adamw_eps=1e-6, ns_dtype="float32", bucket_mb=0.01)
    base.update(overrides)
    return OptimConfig(**base)


def train_reference(steps: int, optim: OptimConfig, max_grad_norm: float | None,
                    moe: bool = True) -> dict[str, torch.Tensor]:
    """Single-process Muon on the global batch; returns the final parameters."""
    model = make_model(moe)
    optimizer = build_optimizer(model, OptimConfig(**{**optim.__dict__, "distributed": "none"}))
    for step in range(steps):
        ids = batch(step)
        model(ids, targets=ids).loss.backward()
        optimizer.step(max_grad_norm)
        optimizer.zero_grad()
        model.update_router_biases()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def run_case(rank: int, world_size: int, optim: OptimConfig, steps: range, max_grad_norm: float | None, moe: bool,
             resume_from: dict | None = None, save_at: int | None = None) -> dict:
    """Distributed Muon on this rank's slice of each global batch for `steps`; full parameters and diagnostics.

    `resume_from` ({"params", "state"}) starts from a saved full model and optimizer state; `save_at` also
    returns that checkpoint after that many completed steps.
    """
    from lagoon.optim.fsdp import full_state_dict, load_full_state_dict, shard_model

    model = make_model(moe)
    data_parallel = DataParallel.from_group()
    if optim.distributed == "fsdp2":
        shard_model(model, data_parallel)
    optimizer = build_optimizer(model, optim, data_parallel)
    if resume_from is not None:
        load_full_state_dict(model, resume_from["params"])
        optimizer.load_state_dict(resume_from["state"])
    result: dict = {"metrics": []}
    for step in steps:
        ids = batch(step, world_size, rank)
        model(ids, targets=ids).loss.backward()
        result["metrics"].append(optimizer.step(max_grad_norm))
        optimizer.zero_grad()
        model.update_router_biases(data_parallel.group)
        if save_at is not None and step + 1 == save_at:
            result["checkpoint"] = {"params": full_state_dict(model), "state": optimizer.state_dict()}
    result["params"] = full_state_dict(model)
    result["state"] = optimizer.state_dict()
    result["state_elements"] = optimizer.owned_state_elements()
    result["balance"] = optimizer.load_balance
    return result


def cases_worker(rank: int, world_size: int, cases: list[dict], out: str) -> None:
    """Run every case in turn in this process group; each rank saves its results."""
    results = [run_case(rank, world_size, **case) for case in cases]
    torch.save(results, Path(out) / f"rank{rank}.pt")


def local_state_elements(optim: OptimConfig, moe: bool) -> int:
    """Elements of optimizer state single-process Muon holds for the test model."""
    optimizer = build_optimizer(make_model(moe), OptimConfig(**{**optim.__dict__, "distributed": "none"}))
    return sum(t.numel() for section in ("muon", "adamw") for entry in optimizer.state_dict()[section].values()
               for t in entry.values())
