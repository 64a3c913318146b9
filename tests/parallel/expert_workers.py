"""Rank-side work of the expert-parallel tests: gloo ranks run the real layer and optimizer, results go to files.

The model is a scaled-down Laguna (3 layers: dense, then two sparse layers of 8 experts, top-2) so EP = 2
and 4 divide its experts and the all-to-alls of two sparse layers must pair up in forward and backward.
Each rank's batch has its own length, so the dispatch splits differ between ranks.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.optim import DataParallel, OptimConfig, build_optimizer
from lagoon.optim.fsdp import full_state_dict
from lagoon.parallel.expert import apply_expert_parallel, expert_parallel_degree, fully_shard_experts
from tests.optim.distributed_helpers import batch

VOCAB = 128
EXPERT_STACKS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def make_model(**overrides) -> LagunaForCausalLM:
    torch.manual_seed(0)
    values = dict(num_hidden_layers=3, vocab_size=VOCAB, hidden_size=48, head_dim=16, num_attention_heads=3,
                  num_key_value_heads=1, attention_heads_by_type={}, intermediate_size=80, moe_intermediate_size=24,
                  shared_expert_intermediate_size=24, num_experts=8, num_experts_per_tok=2)
    values.update(overrides)
    return LagunaForCausalLM(preset_config("tiny", **values))


def rank_batch(rank: int) -> torch.Tensor:
    """Rank `rank`'s own token ids: 2 rows of 5 + 3·rank positions (the lengths differ between ranks)."""
    generator = torch.Generator().manual_seed(500 + rank)
    return torch.randint(0, VOCAB, (2, 5 + 3 * rank), generator=generator)


def ep_mesh(world_size: int, ep: int):
    """The expert-parallel dimension of a (data-parallel, ep) mesh: EP borrows from the data-parallel ranks."""
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (world_size // ep, ep), mesh_dim_names=("dp_mod_ep", "ep"))["ep"]


def is_expert(name: str) -> bool:
    return name.endswith(EXPERT_STACKS)


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (a view of a bigger buffer counts the whole buffer)."""
    storages = {}
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        storage = local.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def forward_backward(model: LagunaForCausalLM, ids: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits of `ids` and the gradients of their mean loss (expert stacks: this rank's shard)."""
    model.zero_grad(set_to_none=True)
    output = model(ids, targets=ids)
    output.loss.backward()
    grads = {name: (p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad).clone()
             for name, p in model.named_parameters() if p.grad is not None}
    return output.logits.detach().clone(), grads


def gradients_case(rank: int, world_size: int, ep: int) -> dict:
    """EP logits and gradients on this rank's batch, with grouped and with looped experts; memory per rank."""
    model = make_model()
    full_bytes = storage_bytes([p for n, p in model.named_parameters() if is_expert(n)])
    mesh = ep_mesh(world_size, ep)
    apply_expert_parallel(model, mesh)
    result = {"ep": expert_parallel_degree(model), "group": mesh.mesh.tolist(), "position": mesh.get_local_rank(), "full_bytes": full_bytes,
              "local_bytes": storage_bytes([p for n, p in model.named_parameters() if is_expert(n)])}
    ids = rank_batch(rank)
    result["logits"], result["grads"] = forward_backward(model, ids)
    for block in model.moe_blocks():
        block.experts.implementation = "loop"
    result["logits_loop"], result["grads_loop"] = forward_backward(model, ids)
    model.eval()
    with torch.no_grad():  # inference (no autograd) runs the same collectives
        result["logits_eval"] = model(ids).logits.clone()
    return result


def shard_with_fsdp2(model: LagunaForCausalLM, world_size: int, ep: int) -> None:
    """EP over "ep", FSDP2 of the experts over "dp_shard_mod_ep", every layer and the root over both (flattened) —
    the order and meshes the sharded engine uses."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (world_size // ep, ep), mesh_dim_names=("dp_shard_mod_ep", "ep"))
    apply_expert_parallel(model, mesh["ep"])
    fully_shard_experts(model, mesh["dp_shard_mod_ep"], gradient_divide_factor=world_size)
    data_parallel_mesh = mesh._flatten("dp_shard")
    for module in [*model.model.layers, model]:
        frozen = {p for p in module.parameters() if not p.requires_grad}
        fully_shard(module, mesh=data_parallel_mesh, ignored_params=frozen or None)


def training_case(rank: int, world_size: int, ep: int, steps: int, optim: OptimConfig) -> dict:
    """`steps` steps of distributed Muon under EP on this rank's slice of each global batch: ``ddp`` with the
    rest replicated, or ``fsdp2`` with everything sharded (`shard_with_fsdp2`)."""
    model = make_model()
    if optim.distributed == "fsdp2":
        shard_with_fsdp2(model, world_size, ep)
    else:
        apply_expert_parallel(model, ep_mesh(world_size, ep))
    data_parallel = DataParallel.from_group()
    optimizer = build_optimizer(model, optim, data_parallel)
    result: dict = {"losses": [], "stats": []}
    for step in range(steps):
        ids = batch(step, world_size, rank)
        loss = model(ids, targets=ids).loss
        loss.backward()
        total = loss.detach().clone()
        dist.all_reduce(total)
        result["losses"].append(float(total) / world_size)
        optimizer.step()
        optimizer.zero_grad()
        result["stats"].append(model.update_router_biases(data_parallel.group))
    result["params"] = full_state_dict(model)
    result["state"] = optimizer.state_dict()
    result["state_elements"] = optimizer.owned_state_elements()
    result["balance"] = optimizer.load_balance
    result["expert_buckets"] = sum(t is not optimizer.transport for t in optimizer.transports)
    result["local_experts"] = len(optimizer.local_params)
    return result


def idle_experts_case(rank: int, world_size: int, ep: int) -> dict:
    """Every token routed to EP position 0's experts (a large correction bias on them): the other positions'
    experts receive no rows, yet every rank's backward must reduce their (zero) gradients, since FSDP2's
    reduce-scatter over the ranks holding them is a collective. This rank's expert gradients and rows."""
    model = make_model()
    for block in model.moe_blocks():
        block.gate.e_score_correction_bias.data[: block.num_experts // ep] = 100.0
    shard_with_fsdp2(model, world_size, ep)
    ids = rank_batch(rank)
    model(ids, targets=ids).loss.backward()
    from lagoon.optim.expert_owners import local_rows

    return {name: (local_rows(p), p.grad.to_local().clone()) for name, p in model.named_parameters() if is_expert(name)}


def checkpoint_case(rank: int, world_size: int, directory: str) -> dict:
    """Save the model at EP = W with torch.distributed.checkpoint, load it into a model at EP = W/2 (a fresh seed)."""
    import torch.distributed.checkpoint as dcp

    saved = make_model()
    apply_expert_parallel(saved, ep_mesh(world_size, world_size))
    dcp.save({"model": saved.state_dict()}, checkpoint_id=directory)
    torch.manual_seed(1)
    loaded = make_model(initializer_range=0.05)
    apply_expert_parallel(loaded, ep_mesh(world_size, world_size // 2))
    state = {"model": loaded.state_dict()}
    dcp.load(state, checkpoint_id=directory)
    local_rows = {n: p.to_local().shape[0] for n, p in loaded.named_parameters() if is_expert(n)}
    return {"saved": full_state_dict(saved), "loaded": full_state_dict(loaded), "local_rows": local_rows}


ENGINE_EXPERTS = 8
ENGINE_STACK = "model.layers.1.mlp.experts.gate_up_proj"


def engine_model() -> LagunaForCausalLM:
    """The model the engine case loads from Hugging Face files: 8 experts, every slice distinguishable."""
    torch.manual_seed(0)
    config = preset_config("tiny", vocab_size=97, hidden_size=32, head_dim=8, num_key_value_heads=2,
                           num_attention_heads=4, intermediate_size=40, moe_intermediate_size=16,
                           shared_expert_intermediate_size=16, num_hidden_layers=3, num_dense_layers=1,
                           num_experts=ENGINE_EXPERTS, num_experts_per_tok=2)
    model = LagunaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)   # no constant tensors: every slice is distinguishable
    return model


def engine_case(rank: int, world_size: int, source: str) -> dict:
    """The engine's own layout (`lagoon.parallel.parallelize` over dp_shard = W, without EP and at EP = 2) from
    the Hugging Face files in `source`: the rows each rank loaded, the full tensors gathered back on rank 0, and
    the expert bytes a rank holds at rest and as the layer computes with them."""
    from lagoon.model.hf import read_config
    from lagoon.parallel.config import ParallelConfig
    from lagoon.parallel.gather import full_tensors
    from lagoon.parallel.load import load_weights
    from lagoon.parallel.materialize import local_part, local_region, materialize
    from lagoon.parallel.mesh import ParallelDims, build_mesh
    from lagoon.parallel.parallelize import parallelize

    results = {}
    for ep in (1, 2):
        config = ParallelConfig(dp_replicate=1, dp_shard=-1, ep=ep)
        mesh = build_mesh(ParallelDims.resolve(config, world_size), "cpu")
        with torch.device("meta"):
            model = LagunaForCausalLM(read_config(Path(source)))
        parallelize(model, mesh, config)
        materialize(model, "cpu")
        load_weights(model, source, distributed=True)
        rows = {name: (local_region(t)[0].start, local_region(t)[0].stop, local_part(t).clone())
                for name, t in model.state_dict().items()}
        gathered = {name: tensor.clone() for name, tensor in full_tensors(model, None, mesh) if tensor is not None}
        # The expert stack as the layer computes with it: FSDP2 has gathered it (over dp_shard_mod_ep) by the
        # time the experts' own forward pre-hooks run; under EP that is this EP rank's E/ep experts.
        computed = []
        experts = model.get_submodule(ENGINE_STACK.rsplit(".", 1)[0])
        experts.register_forward_pre_hook(lambda module, args: computed.append(
            local_part(module.gate_up_proj).untyped_storage().nbytes()))
        ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(rank))
        model(ids, targets=ids).loss.backward()
        results[ep] = {"rows": rows, "gathered": gathered, "computed": computed[0],
                       "at_rest": local_part(experts.gate_up_proj).untyped_storage().nbytes()}
    return results


def cases_worker(rank: int, world_size: int, cases: list[tuple[str, dict]], out: str) -> None:
    runners = {"gradients": gradients_case, "training": training_case, "checkpoint": checkpoint_case,
               "idle": idle_experts_case, "engine": engine_case}
    results = [runners[kind](rank, world_size, **kwargs) for kind, kwargs in cases]
    torch.save(results, Path(out) / f"rank{rank}.pt")
