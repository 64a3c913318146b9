"""Expert parallelism: each rank holds E/P whole routed experts and tokens travel to them and back.

`apply_expert_parallel(model, ep_mesh)` turns every sparse layer's expert stacks (``gate_up_proj``
[E, 2F, D], ``down_proj`` [E, D, F]) into DTensors sharded on dim 0 (``Shard(0)``) over a 1-D mesh of P
ranks, so rank p holds experts [p·E/P, (p+1)·E/P) whole (the layout torch.distributed.checkpoint reshards,
and the one distributed Muon orthogonalizes in place). Router, shared expert, attention and dense layers
are untouched: every rank routes its own tokens, as in data parallelism.

A sparse layer's routed experts then run as (dropless, no capacity factor; Lepikhin et al. 2021 "GShard"
§2.2 for the dispatch/combine pattern, here with variable split sizes as in torchtitan's ExpertParallel):

    1. rows grouped by expert (as in the single-process path) → counts_PEl [P, E/P] exchanged with one
       all-to-all, so every rank knows how many rows it will receive for each of its experts;
    2. dispatch: `all_to_all_single` with variable splits; received rows are source-major;
    3. regroup them expert-major and run the local experts (`torch._grouped_mm`, or the per-expert loop);
    4. combine: undo the regrouping and send every row back with the reverse all-to-all.

Both all-to-alls are differentiable (`_AllToAll`: the backward is the reverse all-to-all), so an expert's
gradient on its holder sums the contributions of every rank's tokens. Every rank must run every sparse
layer's forward and backward the same number of times (the collectives pair up across ranks), also in
evaluation.

Installation swaps the class of each ``mlp.experts`` module to `ExpertParallelExperts` (as FSDP2's
``fully_shard`` does): parameters, names and state-dict keys stay those of `lagoon.model.moe.Experts`, which
is why `lagoon.model` needs no knowledge of parallelism. FSDP2 over the remaining data-parallel ranks
composes on top (`fully_shard_experts`; its class swap subclasses this one).

Shape legend: M rows sent (this rank's routed (token, expert) pairs), R rows received, D model width,
P expert-parallel ranks, El = E/P local experts.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from lagoon.errors import ConfigError
from lagoon.model.config import ModelConfig
from lagoon.model.moe import Experts, MoE, run_experts


def check_expert_parallel(model_config: ModelConfig, ep: int, world_size: int) -> None:
    """Raise a one-line `ConfigError` on ``parallel.ep`` unless `ep` divides the world and the routed experts."""
    if ep < 1:
        raise ConfigError("parallel.ep", f"must be >= 1, got {ep}")
    if world_size % ep:
        raise ConfigError("parallel.ep", f"{ep} does not divide the world size {world_size}; expert-parallel groups "
                                         "are carved out of the data-parallel ranks")
    sparse = "sparse" in (model_config.mlp_layer_types or [])
    if sparse and model_config.num_experts % ep:
        raise ConfigError("parallel.ep", f"{ep} does not divide model.num_experts ({model_config.num_experts}); "
                                         "every rank must hold the same number of whole experts")


class _AllToAll(torch.autograd.Function):
    """`all_to_all_single` with variable splits; the gradient travels back by the reverse all-to-all."""

    @staticmethod
    def forward(ctx, x_MD: torch.Tensor, output_splits: list[int], input_splits: list[int],
                group: dist.ProcessGroup) -> torch.Tensor:
        ctx.splits, ctx.group = (output_splits, input_splits), group
        out_RD = x_MD.new_empty((sum(output_splits), *x_MD.shape[1:]))
        dist.all_to_all_single(out_RD, x_MD.contiguous(), output_splits, input_splits, group=group)
        return out_RD

    @staticmethod
    def backward(ctx, grad_RD: torch.Tensor):
        output_splits, input_splits = ctx.splits
        grad_MD = grad_RD.new_empty((sum(input_splits), *grad_RD.shape[1:]))
        dist.all_to_all_single(grad_MD, grad_RD.contiguous(), input_splits, output_splits, group=ctx.group)
        return grad_MD, None, None, None


def all_to_all(x_MD: torch.Tensor, output_splits: list[int], input_splits: list[int],
               group: dist.ProcessGroup) -> torch.Tensor:
    """Differentiable variable-split all-to-all: rows [sum(input_splits), …] out, [sum(output_splits), …] in."""
    return _AllToAll.apply(x_MD, output_splits, input_splits, group)


def expert_major_order(received_PEl: torch.Tensor) -> torch.Tensor:
    """The permutation that regroups received rows from (source rank, local expert) order to (expert, source).

    `received_PEl[p, j]` rows came from rank p for local expert j, laid out source-major; the result lists
    the received row indices expert-major (stable within each block), so each expert's rows are contiguous.
    """
    P, El = received_PEl.shape
    key_PEl = torch.arange(El, device=received_PEl.device) * P + torch.arange(P, device=received_PEl.device)[:, None]
    key_R = torch.repeat_interleave(key_PEl.reshape(-1), received_PEl.reshape(-1))
    return key_R.argsort(stable=True)


class ExpertParallelExperts(Experts):
    """`Experts` whose stacks are ``Shard(0)`` DTensors over an expert-parallel mesh (see the module docstring).

    Instances are made by `apply_expert_parallel` (a class swap), never constructed directly.
    """

    ep_group: dist.ProcessGroup
    num_shards: int
    """P: expert-parallel ranks (each holds num_experts / P experts)."""

    def compute(self, x_MD: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
        P, group = self.num_shards, self.ep_group
        # 1. Row counts: this rank sends sent_PEl[p, j] rows to rank p's local expert j; the exchange tells it
        #    how many each rank sends to its own experts. Split sizes must be on the host for all_to_all_single.
        sent_PEl = counts_E.reshape(P, -1).contiguous()
        received_PEl = torch.empty_like(sent_PEl)
        dist.all_to_all_single(received_PEl, sent_PEl, group=group)
        send_splits, receive_splits = sent_PEl.sum(1).tolist(), received_PEl.sum(1).tolist()
        # 2. Dispatch: rows are already grouped by expert, hence by destination rank.
        x_RD = all_to_all(x_MD, receive_splits, send_splits, group)
        # 3. Local experts over expert-major rows.
        order_R = expert_major_order(received_PEl)
        x_sorted_RD = x_RD[order_R]
        gate_up_El2FD, down_ElDF = self.gate_up_proj.to_local(), self.down_proj.to_local()
        if x_sorted_RD.shape[0] == 0:
            # Nothing to compute, but the (empty) rows keep the autograd graph, so the backward all-to-alls
            # still run here and pair with the other ranks'; and the output depends on the weights (with zero
            # gradients), so this rank's experts get gradients like every other rank's and FSDP2's gradient
            # reduction over the ranks holding them (a collective that it skips without gradients) runs here too.
            y_sorted_RD = x_sorted_RD + (gate_up_El2FD.sum() + down_ElDF.sum()) * 0
        else:
            y_sorted_RD = run_experts(x_sorted_RD, received_PEl.sum(0), gate_up_El2FD, down_ElDF, self.implementation)
        y_RD = torch.empty_like(y_sorted_RD).index_copy(0, order_R, y_sorted_RD)
        # 4. Combine: every row back to the rank that routed it, in the order it was sent.
        return all_to_all(y_RD, send_splits, receive_splits, group)


def _as_mesh(ep_mesh, device_type: str):
    from torch.distributed.device_mesh import DeviceMesh

    if isinstance(ep_mesh, DeviceMesh):
        assert ep_mesh.ndim == 1, f"the expert-parallel mesh must be 1-D, got {ep_mesh.ndim} dimensions"
        return ep_mesh
    return DeviceMesh.from_group(ep_mesh if ep_mesh is not None else dist.group.WORLD, device_type)


def apply_expert_parallel(model: nn.Module, ep_mesh, device_type: str | None = None) -> nn.Module:
    """Shard every sparse layer's routed experts over `ep_mesh` (a 1-D DeviceMesh or a process group), in place.

    Works on a materialized model (each rank keeps its own rows of the full stacks, which must be equal on
    every rank, as after seeding) and on the meta device (nothing is allocated). Returns the model.
    A mesh of size 1 leaves the model as it is.
    """
    from torch.distributed.tensor import Shard, distribute_tensor

    blocks = [m for m in model.modules() if isinstance(m, MoE)]
    if device_type is None:
        device = next(model.parameters()).device
        device_type = ("cuda" if torch.cuda.is_available() else "cpu") if device.type == "meta" else device.type
    mesh = _as_mesh(ep_mesh, device_type)
    ep = mesh.size()
    check_expert_parallel(model.config, ep, dist.get_world_size())
    if ep == 1:
        return model
    for block in blocks:
        experts = block.experts
        assert type(experts) is Experts, f"expert parallelism is already applied to {type(experts).__name__}"
        for name in ("gate_up_proj", "down_proj"):
            param = getattr(experts, name)
            # src_data_rank=None: every rank takes its own chunk of its (identical) full tensor, no collective.
            sharded = distribute_tensor(param.detach(), mesh, [Shard(0)], src_data_rank=None)
            setattr(experts, name, nn.Parameter(sharded, requires_grad=param.requires_grad))
        experts.__class__ = ExpertParallelExperts
        experts.ep_group = mesh.get_group()
        experts.num_shards = ep
    return model


def fully_shard_experts(model: nn.Module, mesh, gradient_divide_factor: int, **fsdp_options) -> nn.Module:
    """FSDP2 over the data-parallel ranks that share an EP position (``dp_shard_mod_ep``, or
    [dp_replicate, dp_shard_mod_ep] under HSDP), after `apply_expert_parallel` and before the decoder layers'
    own ``fully_shard`` (torchtitan's order).

    Each rank then holds about E/(P·dp_shard_mod_ep) whole experts (dim 0 is the expert). An expert's gradient
    already sums the tokens of its EP group, so FSDP2 must divide the reduced gradient by the whole
    data-parallel size (`gradient_divide_factor`), not by the size of `mesh`.
    """
    from torch.distributed.fsdp import fully_shard

    shard_dim = mesh.ndim - 1   # HSDP: [replicate, shard]; FSDP2 reduce-scatters over the last dimension
    # A custom factor reduce-scatters with NCCL's PreMulSum, which gloo lacks: there, sum and scale after.
    # Not over a single shard rank, where FSDP2 skips the collective and divides by the factor itself (also
    # forcing the sum would divide twice).
    force_sum = dist.get_backend(mesh.get_group(shard_dim)) == "gloo" and mesh.size(shard_dim) > 1
    for block in [m for m in model.modules() if isinstance(m, MoE)]:
        assert isinstance(block.experts, ExpertParallelExperts), "apply_expert_parallel first"
        fully_shard(block.experts, mesh=mesh, **fsdp_options)
        block.experts.set_gradient_divide_factor(float(gradient_divide_factor))
        block.experts.set_force_sum_reduction_for_comms(force_sum)
    return model


def expert_parallel_degree(model: nn.Module) -> int:
    """P of a model's expert layout (1 when its experts are not expert-parallel)."""
    return max((m.num_shards for m in model.modules() if isinstance(m, Experts)), default=1)
