"""Before the first collective: check that every rank built the same optimizer for the same model.

Ranks that disagree on the plan — a different `[optim]` value, a different model shape — would issue
different collectives and hang (NCCL) or abort inside gloo with an unhelpful size mismatch. One small
``all_gather_object`` of each rank's description turns that into a `LagoonError` on every rank naming the
first difference and the ranks involved.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist

from lagoon.errors import LagoonError
from lagoon.optim.data_parallel import DataParallel


def describe(config: Any, named_shapes: list[tuple[str, tuple[int, ...]]], mode: str) -> dict[str, Any]:
    """What must match across ranks: the optimizer config, the mode and every parameter's name and shape."""
    from lagoon.configio import to_dict

    return {"optim": to_dict(config), "mode": mode, "parameters": [(n, tuple(s)) for n, s in named_shapes]}


def _first_difference(first: dict[str, Any], other: dict[str, Any]) -> tuple[str, Any, Any]:
    """(what, value on the first rank, value on the other) for the first disagreement."""
    for key, value in first["optim"].items():
        if other["optim"].get(key) != value:
            return f"optim.{key}", value, other["optim"].get(key)
    if first["mode"] != other["mode"]:
        return "optimizer mode", first["mode"], other["mode"]
    a, b = first["parameters"], other["parameters"]
    for (name_a, shape_a), (name_b, shape_b) in zip(a, b):
        if (name_a, shape_a) != (name_b, shape_b):
            return "model parameter", f"{name_a} {list(shape_a)}", f"{name_b} {list(shape_b)}"
    return "number of parameters", len(a), len(b)


def check_same_plan(description: dict[str, Any], data_parallel: DataParallel) -> None:
    """Raise `LagoonError` on every rank unless all ranks passed the same `description`."""
    if not data_parallel.distributed:
        return
    everyone: list[Any] = [None] * data_parallel.world_size
    dist.all_gather_object(everyone, description, group=data_parallel.group)
    for rank, theirs in enumerate(everyone):
        if theirs != everyone[0]:
            what, ours, other = _first_difference(everyone[0], theirs)
            raise LagoonError(f"data-parallel ranks disagree: {what} is {ours!r} on rank 0 but {other!r} on rank "
                              f"{rank}; start every rank with the same config and model")
