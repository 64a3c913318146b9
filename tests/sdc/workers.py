"""Multi-process SDC scenarios on a real tiny Laguna and real optimizer steps; one process per rank.

    python -m tests.sdc.workers OUT_DIR       (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT set per process)

Each rank writes OUT_DIR/rankN.json with what it observed; tests/sdc/test_replicas.py asserts on it. All
random choices come from generators seeded identically on every rank, so every rank knows which rank
is meant to flip which bit.
"""

from __future__ import annotations

import copy
import json
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.optim import OptimConfig, build_optimizer
from lagoon.sdc.checker import ReplicaChecker
from lagoon.sdc.errors import SDCError
from lagoon.sdc.fingerprint import Fingerprinter
from lagoon.sdc.inject import flip_bit
from lagoon.sdc.replicas import ReplicaGroup

MODEL = {"vocab_size": 256, "hidden_size": 64, "head_dim": 16, "num_hidden_layers": 2, "intermediate_size": 128,
         "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64}
HEALTHY_STEPS = 30
TRIALS_FP32 = 48
TRIALS_BF16 = 16
BITS = ["sign", "exponent", "mantissa"]


def _train_step(model, wrapped, optimizer, rank: int, step: int, loss_scale: float = 1.0) -> dict:
    generator = torch.Generator().manual_seed(1000 * step + rank)  # each rank its own data, as in DDP
    tokens = torch.randint(0, MODEL["vocab_size"], (2, 33), generator=generator)
    loss = wrapped(tokens[:, :-1], targets=tokens[:, 1:]).loss
    (loss * loss_scale).backward()
    metrics = optimizer.step(max_grad_norm=1.0)
    optimizer.zero_grad()
    model.update_router_biases(dist.group.WORLD)
    return metrics


def _injection_trials(model, checker, rank: int, world: int, trials: int, seed: int, step0: int) -> list[dict]:
    """Flip a random bit of a random parameter on a random rank, check, record the verdict, undo, check again."""
    chooser = random.Random(seed)
    params = list(model.named_parameters())
    out = []
    for trial in range(trials):
        target = chooser.randrange(world)
        name, param = params[chooser.randrange(len(params))]
        element = chooser.randrange(param.numel())
        bit = chooser.choice(BITS + [str(chooser.randrange(param.element_size() * 8))])
        if rank == target:
            flip_bit(param.data, element, bit)
        result = checker.check(model, step0 + trial)
        if rank == target:
            flip_bit(param.data, element, bit)
        after = checker.check(model, step0 + trial)
        out.append({"target": target, "parameter": name, "bit": bit, "agreed": result.verdict.agreed,
                    "faulty": {str(k): v for k, v in result.verdict.faulty_replicas().items()},
                    "restored": after.verdict.agreed})
    return out


def main(out_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    report: dict = {"rank": rank}
    torch.manual_seed(0)  # identical initial weights on every rank
    model = LagunaForCausalLM(preset_config("tiny", **MODEL))
    optimizer = build_optimizer(model, OptimConfig(ns_dtype="float32"))
    wrapped = DistributedDataParallel(model)
    replicas = ReplicaGroup.from_group(dist.group.WORLD, timeout_s=30)
    checker = ReplicaChecker(replicas, Fingerprinter(lanes=4))
    report["hosts"] = replicas.hosts

    # 1. Healthy training: every check agrees.
    disagreements = 0
    for step in range(1, HEALTHY_STEPS + 1):
        _train_step(model, wrapped, optimizer, rank, step)
        disagreements += not checker.check(model, step).verdict.agreed
    report["healthy_checks"], report["false_positives"] = HEALTHY_STEPS, disagreements

    # 2. Random single flips on trained fp32 weights, then on a bf16 copy.
    report["fp32"] = _injection_trials(model, checker, rank, world, TRIALS_FP32, seed=7, step0=100)
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    report["bf16"] = _injection_trials(bf16, checker, rank, world, TRIALS_BF16, seed=8, step0=200)

    # 3. Two faults at once on different ranks and parameters: both named.
    params = dict(model.named_parameters())
    first, second = "model.layers.1.mlp.experts.down_proj", "lm_head.weight"
    if rank == 1:
        flip_bit(params[first].data, 3, "sign")
    if rank == 2:
        flip_bit(params[second].data, 10, "mantissa")
    report["two_faults"] = {str(k): v for k, v in checker.check(model, 300).verdict.faulty_replicas().items()}
    if rank == 1:
        flip_bit(params[first].data, 3, "sign")
    if rank == 2:
        flip_bit(params[second].data, 10, "mantissa")

    # 4. A 2–2 tie: no majority, every replica a suspect.
    if rank in (0, 1):
        flip_bit(params["model.norm.weight"].data, 0, "exponent")
    verdict = checker.check(model, 301).verdict
    report["tie"] = {"resolved": verdict.resolved, "suspects": verdict.suspects(),
                     "groups": [v.groups for v in verdict.votes]}
    if rank in (0, 1):
        flip_bit(params["model.norm.weight"].data, 0, "exponent")

    # 5. HSDP: a 2 (replicate) × 2 (shard) mesh; only ranks holding the same shard are compared.
    if world == 4:
        report["hsdp"] = _hsdp(rank)

    # 6. Pre-reduction checks on the DDP model: a rank's NaN, a rank's gradient spike, an all-replica loss spike.
    report["precheck"] = _precheck(model, wrapped, optimizer, checker, replicas, rank)

    # 7. Distributed Muon: a corrupted Newton–Schulz result on its owner is invisible to replica fingerprints
    #    and caught by owner verification.
    report["owner"] = _owner(rank, replicas)

    # 8. A rank that does not show up: the others get SDCHung within the deadline, naming it.
    late = ReplicaGroup.from_group(dist.group.WORLD, timeout_s=3)
    started = time.monotonic()
    try:
        if rank == world - 1:
            time.sleep(6)
        late.all_gather(torch.zeros(2, 4, dtype=torch.int64), "fingerprint gather", 400)
        report["late"] = {"error": None}
    except SDCError as error:
        report["late"] = {"error": str(error), "exit_code": error.exit_code, "ranks": error.ranks,
                          "seconds": time.monotonic() - started}
    except RuntimeError as error:
        report["late"] = {"error": str(error), "exit_code": None, "seconds": time.monotonic() - started}
    (out_dir / f"rank{rank}.json").write_text(json.dumps(report))
    os._exit(0)  # the process group is broken on purpose by step 6; skip its teardown


def _precheck(model, wrapped, optimizer, checker, replicas, rank: int) -> dict:
    from lagoon.sdc.config import SDCConfig
    from lagoon.sdc.precheck import PreReductionMonitor

    config = SDCConfig(skip_spikes=True, spike_warmup=3, grad_spike_factor=10.0, loss_spike_factor=3.0)
    monitor = PreReductionMonitor(config, replicas)
    monitor.attach(model, wrapped, optimizer, step=HEALTHY_STEPS)
    out: dict = {}
    step = HEALTHY_STEPS
    for _ in range(4):  # history for the running means
        step += 1
        _train_step(model, wrapped, optimizer, rank, step)
    out["warm_events"] = monitor.take_events()
    step += 1
    before = checker.digest(model)
    metrics = _train_step(model, wrapped, optimizer, rank, step, loss_scale=float("nan") if rank == 2 else 1.0)
    out["nan"] = {"events": monitor.take_events(), "skipped": metrics.get("skipped"),
                  "changed": _changed(before, checker.digest(model))}
    step += 1
    _train_step(model, wrapped, optimizer, rank, step, loss_scale=1e4 if rank == 1 else 1.0)
    out["grad_spike"] = monitor.take_events()
    step += 1
    head = model.lm_head.weight
    with torch.no_grad():
        head.mul_(-500.0)  # the same corruption on every replica: fingerprints agree, the loss does not
    before = checker.digest(model)
    metrics = _train_step(model, wrapped, optimizer, rank, step)
    out["loss_spike"] = {"events": monitor.take_events(), "skipped": metrics.get("skipped"),
                         "changed": _changed(before, checker.digest(model)),
                         "replicas_agree": checker.check(model, step).verdict.agreed}
    with torch.no_grad():
        head.div_(-500.0)
    return out


def _changed(before: tuple[list[str], torch.Tensor], after: tuple[list[str], torch.Tensor]) -> list[str]:
    names, table = before
    return [names[i] for i in (table != after[1]).any(dim=1).nonzero().flatten().tolist()]


def _owner(rank: int, replicas: ReplicaGroup) -> dict:
    from lagoon.optim import DataParallel
    from lagoon.sdc.config import FaultSpec, SDCConfig
    from lagoon.sdc.inject import FaultInjector
    from lagoon.sdc.owner import OwnerVerifier

    torch.manual_seed(0)
    model = LagunaForCausalLM(preset_config("tiny", **MODEL))
    optimizer = build_optimizer(model, OptimConfig(ns_dtype="float32", distributed="ddp"),
                                DataParallel.from_group(dist.group.WORLD))
    config = SDCConfig(owner_verify_every=1, owner_verify_samples=2,
                       faults=[FaultSpec(kind="ns_corrupt", step=3, rank=1, bit="exponent")])
    injector = FaultInjector(config.faults, rank, say=lambda message: None)
    verifier = OwnerVerifier.attach(optimizer, config, replicas, injector, step=0)
    checker = ReplicaChecker(replicas, Fingerprinter())
    steps = []
    for step in range(1, 5):
        _train_step(model, model, optimizer, rank, step)
        events = verifier.after_step(step)
        steps.append({"step": step, "events": events, "replicas_agree": checker.check(model, step).verdict.agreed})
    return {"steps": steps, "verified": verifier.verified, "injected": injector.log}


def _hsdp(rank: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    torch.manual_seed(1)
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(distribute_tensor(torch.randn(8, 6), mesh, [Replicate(), Shard(0)]))
    module.bias = torch.nn.Parameter(distribute_tensor(torch.randn(8), mesh, [Replicate(), Shard(0)]))
    replicas = ReplicaGroup.from_mesh(mesh, "replicate", timeout_s=30)
    checker = ReplicaChecker(replicas, Fingerprinter())
    clean = checker.check(module, 500)
    if rank == 3:
        flip_bit(module.weight.data.to_local(), 2, "sign")
    flipped = checker.check(module, 501)
    return {"replica_ranks": replicas.ranks, "clean_agreed": clean.verdict.agreed,
            "local_digest": clean.local.tolist(), "flipped_agreed": flipped.verdict.agreed,
            "suspects": [replicas.ranks[p] for p in flipped.verdict.suspects()],
            "parameters": [v.name for v in flipped.verdict.votes]}


if __name__ == "__main__":
    main(Path(sys.argv[1]))
