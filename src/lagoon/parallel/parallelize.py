"""`parallelize(model, mesh, config)`: apply parallelism to a plain Laguna model, in a fixed order.

    1. activation checkpointing, per decoder block (``none | selective | full``);
    2. expert parallelism (``parallel.ep``; refused in this build, `lagoon.parallel.config`);
    3. FSDP2 ``fully_shard`` on every decoder block, then on the root, with a ``MixedPrecisionPolicy`` —
       over the 2-D mesh (HSDP: replicate × shard) when there are replicas, over the shard dimension alone
       (FSDP) when not. A layout without sharding (dp_shard = 1) is left alone here: the engine wraps it
       in DDP (or distributed Muon reduces its gradients), which costs a replicated model nothing.

The order is torchtitan's (parallelize_llama): checkpointing wraps the block's computation before FSDP2
installs its all-gather hooks around the block, so a recomputed forward finds the block's parameters
already gathered by FSDP2's pre-backward hook. The model modules know nothing of this: parallelism is
applied from outside, and parameter names do not change (checkpointing replaces a block's ``forward``
instead of wrapping the module), so checkpoints and optimizer groups read the same names in every layout.

Every parameter stays float32 (the master weights); ``param_dtype`` is only the dtype FSDP2 gathers into.
The router's ``e_score_correction_bias`` is not sharded (``ignored_params``): gradients never train it, and
the aux-loss-free update changes it in place, identically on every rank, after each step.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lagoon.parallel.config import ParallelConfig
from lagoon.parallel.mesh import Mesh

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.model.layers)


def checkpointed_blocks(count: int, mode: str) -> list[int]:
    """Which of `count` blocks recompute their activations: all (``full``), every other one starting with
    the first (``selective``: half the activation memory saved for half the recompute), or none."""
    if mode == "full":
        return list(range(count))
    if mode == "selective":
        return list(range(0, count, 2))
    assert mode == "none", mode
    return []


@contextlib.contextmanager
def _keep_router_records(block: nn.Module):
    """The recomputed forward must not count routed tokens twice: MoE blocks record their expert loads and
    aux losses in forward, so their records are put back as they were after the recomputation."""
    saved = [(moe, moe.expert_counts.clone() if moe.expert_counts is not None else None, dict(moe.aux_losses))
             for moe in block.modules() if hasattr(moe, "expert_counts")]
    try:
        yield
    finally:
        for moe, counts, aux in saved:
            moe.expert_counts, moe.aux_losses = counts, aux


def apply_activation_checkpointing(model: nn.Module, mode: str) -> list[int]:
    """Replace the forward of the chosen blocks with a non-reentrant checkpoint of it; returns their indices."""
    chosen = checkpointed_blocks(len(decoder_blocks(model)), mode)
    for index in chosen:
        block = decoder_blocks(model)[index]
        plain = block.forward
        contexts = functools.partial(lambda b: (contextlib.nullcontext(), _keep_router_records(b)), block)
        block.forward = functools.partial(checkpoint, plain, use_reentrant=False, context_fn=contexts)
    return chosen


def apply_fsdp(model: nn.Module, mesh: Mesh, config: ParallelConfig) -> None:
    """``fully_shard`` each decoder block and the root (embeddings, final norm, LM head) on the mesh."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=DTYPES[config.param_dtype], reduce_dtype=DTYPES[config.reduce_dtype],
                                  output_dtype=None, cast_forward_inputs=True)
    frozen = {p for p in model.parameters() if not p.requires_grad}
    for block in decoder_blocks(model):
        ignored = {p for p in block.parameters() if p in frozen}
        fully_shard(block, mesh=mesh.fsdp_mesh, mp_policy=policy, reshard_after_forward=config.reshard_after_forward,
                    ignored_params=ignored or None)
    # The root's parameters are used last in the forward and first in the backward: keeping them gathered
    # between the two saves one all-gather per step (torchtitan does the same).
    fully_shard(model, mesh=mesh.fsdp_mesh, mp_policy=policy, reshard_after_forward=False,
                ignored_params=frozen or None)


def parallelize(model: nn.Module, mesh: Mesh, config: ParallelConfig) -> nn.Module:
    """Apply checkpointing, then (in sharded layouts) FSDP2/HSDP, in place; returns the model.

    Works on a model on the meta device (the usual case: materialize afterwards with
    `lagoon.parallel.materialize`) as well as on a materialized one."""
    apply_activation_checkpointing(model, config.activation_checkpointing)
    assert config.ep == 1, "expert parallelism is refused at config load"
    if mesh.dims.sharded:
        apply_fsdp(model, mesh, config)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether `model`'s parameters are DTensors (FSDP2/HSDP)."""
    return any(hasattr(p, "device_mesh") for p in model.parameters())
