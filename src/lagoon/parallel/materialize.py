"""From a model on the meta device to real tensors, shard by shard: each rank allocates and fills only what it holds.

    with torch.device("meta"):
        model = LagunaForCausalLM(config)
    parallelize(model, mesh, config.parallel)
    materialize(model, device)          # to_empty: local shards only, no values yet
    init_parameters(model)              # a fresh model; or lagoon.parallel.load.load_weights(model, path)

A fresh initialisation is the same in every layout: each parameter's full value is drawn from the global
RNG, in the model's parameter order, by the model's own rule (``LagunaForCausalLM.init_parameter``), and
each rank keeps its slice — one parameter at a time, so the peak is the largest single parameter, not the
model. Seeded alike, W=1, FSDP and HSDP start from bit-identical weights.
"""

from __future__ import annotations

import torch
from torch import nn


def local_region(tensor: torch.Tensor) -> tuple[slice, ...]:
    """The part of the full tensor this rank holds: every index for a plain tensor, the DTensor's shard else."""
    if not hasattr(tensor, "device_mesh"):
        return tuple(slice(0, size) for size in tensor.shape)
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
    return tuple(slice(start, start + size) for start, size in zip(offset, shape))


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """The rank-local tensor (a view that writes through to the parameter)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def materialize(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Allocate the (local shards of the) parameters and buffers on `device`, uninitialised."""
    model.to_empty(device=device)
    if not any(hasattr(p, "device_mesh") for p in model.parameters()):
        model.tie_weights()   # to_empty on a plain model re-creates each parameter: tie the LM head again
    model.reset_rotary()
    return model


@torch.no_grad()
def init_parameters(model: nn.Module, device: torch.device | str | None = None) -> None:
    """Initialise every parameter as `LagunaForCausalLM.init_weights` would on one rank (see the docstring)."""
    for name, param in model.named_parameters():
        local = local_part(param)
        full = torch.empty(param.shape, dtype=local.dtype, device=device or local.device)
        model.init_parameter(name, full)
        local.copy_(full[local_region(param)])
    model.reset_rotary()
