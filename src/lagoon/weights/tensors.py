"""The one naming and ordering of a Laguna's weights, and their digest.

**Runtime names** are lagoon's (= transformers' ``LagunaForCausalLM`` runtime names, fused expert stacks).
**The fixed order** is sorted runtime names with a tied ``lm_head.weight`` left out: every transfer
(lagoon's broadcast, shared-memory segments, vLLM's packed transfer), every digest and every streamed
checkpoint walks the weights in it. A *source* of weights is any of

- an ``nn.Module`` (its ``state_dict``), or a mapping of runtime names to tensors: put in the order here;
- an iterable of ``(runtime name, tensor)`` pairs already in the fixed order, consumed once — e.g. a sharded
  trainer gathering one full tensor at a time on rank 0 (`expected_layout` tells it what to yield).

**Hub names** are the on-disk Hugging Face layout that transformers, vLLM and SGLang read (experts split):

    runtime (lagoon and transformers)                 on disk (Hugging Face hub format, vLLM's load_weights)
    mlp.experts.gate_up_proj [E, 2F, D]         <->   mlp.experts.{j}.gate_proj.weight [F, D], .up_proj.weight [F, D]
    mlp.experts.down_proj    [E, D, F]          <->   mlp.experts.{j}.down_proj.weight [D, F]
    mlp.gate.e_score_correction_bias            <->   mlp.experts.e_score_correction_bias
    mlp.shared_experts.*                        <->   mlp.shared_expert.*

Shape legend: E experts, F expert width, D model width.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Union

import torch
from torch import nn

from lagoon.errors import LagoonError

WeightSource = Union[nn.Module, Mapping[str, torch.Tensor], Iterable[tuple[str, torch.Tensor]]]
Layout = list[tuple[str, str, list[int]]]
"""(runtime name, dtype name, shape) of every tensor, in the fixed order."""

TIED_HEAD = "lm_head.weight"
EMBEDDING = "model.embed_tokens.weight"

_EXPERT_STACK = re.compile(r"^(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$")
_EXPERT_SPLIT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


# --------------------------------------------------------------------------------------------------
# Order


def ordered_tensors(source: WeightSource) -> Iterator[tuple[str, torch.Tensor]]:
    """(runtime name, detached tensor) of every weight of `source`, in the fixed order.

    A module or mapping is sorted here (a tied head left out); an iterable must already be in order, which
    is checked as it streams by (a name out of order is a bug in the producer, so it raises at once).
    """
    if isinstance(source, (nn.Module, Mapping)):
        state = source.state_dict() if isinstance(source, nn.Module) else dict(source)
        head, embed = state.get(TIED_HEAD), state.get(EMBEDDING)
        if head is not None and embed is not None and not head.is_meta and head.data_ptr() == embed.data_ptr():
            del state[TIED_HEAD]
        for name in sorted(state):
            yield name, state[name].detach()
        return
    previous = None
    for name, tensor in source:
        if previous is not None and name <= previous:
            raise LagoonError(f"weights must come in sorted-name order: {name!r} came after {previous!r}")
        previous = name
        yield name, tensor.detach()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def layout_of(source: nn.Module | Mapping[str, torch.Tensor]) -> Layout:
    return [(name, dtype_name(t.dtype), list(t.shape)) for name, t in ordered_tensors(source)]


def expected_layout(config, dtype: torch.dtype = torch.float32) -> Layout:
    """The layout a model of `config` (a `lagoon.model.ModelConfig`) has in `dtype`, from a meta-device build:
    what a streaming producer must yield, in this order."""
    from lagoon.model import LagunaForCausalLM

    with torch.device("meta"):
        model = LagunaForCausalLM(config).to(dtype)
    # Meta tensors have no storage to compare: the config says whether the head is the embedding.
    return [entry for entry in layout_of(model) if not (config.tie_word_embeddings and entry[0] == TIED_HEAD)]


def layout_problem(theirs: Mapping[str, list[int]], model: nn.Module) -> str | None:
    """Why tensors named and shaped as `theirs` cannot be copied into `model`'s weights (None if they can)."""
    ours = {name: list(t.shape) for name, t in ordered_tensors(model)}
    theirs = {name: list(shape) for name, shape in theirs.items()}
    missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
    if missing:
        return f"missing {missing[:3]}"
    if unexpected:
        return f"unexpected {unexpected[:3]}"
    for name, shape in theirs.items():
        if ours[name] != shape:
            return f"{name} has shape {shape}, the served model has {ours[name]}"
    return None


class LayoutCheck:
    """Checks a stream against a layout, tensor by tensor, and that it ends where the layout does."""

    def __init__(self, layout: Layout):
        self.layout = layout
        self.index = 0

    def __call__(self, name: str, tensor: torch.Tensor) -> None:
        if self.index >= len(self.layout):
            raise LagoonError(f"the weights have more tensors than the model ({len(self.layout)}); first extra: {name}")
        expected = self.layout[self.index]
        got = (name, dtype_name(tensor.dtype), list(tensor.shape))
        if got != expected:
            raise LagoonError(f"weight {self.index} is {got}, the model's layout expects {expected}")
        self.index += 1

    def finish(self) -> None:
        if self.index != len(self.layout):
            raise LagoonError(f"the weights ended after {self.index} of {len(self.layout)} tensors "
                              f"(next expected: {self.layout[self.index][0]})")


# --------------------------------------------------------------------------------------------------
# Digest


class Digest:
    """SHA-256 over each tensor's name, dtype, shape and raw bytes, fed in the fixed order.

    `dtype` casts floating-point tensors first (a trainer with fp32 weights checking a bf16 server).
    """

    def __init__(self, dtype: torch.dtype | None = None):
        self.dtype = dtype
        self.sha = hashlib.sha256()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self.dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        self.sha.update(f"{name}|{dtype_name(tensor.dtype)}|{list(tensor.shape)}\n".encode())
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        self.sha.update(memoryview(flat.view(torch.uint8).numpy()))

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def weights_digest(source: WeightSource, dtype: torch.dtype | None = None) -> str:
    """SHA-256 hex digest of every weight in the fixed order (see `Digest`); what ``GET /v1/weights`` reports."""
    digest = Digest(dtype)
    for name, tensor in ordered_tensors(source):
        digest.add(name, tensor)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Runtime names <-> hub names


def hub_tensors(name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """One runtime tensor in the hub layout: renamed, an expert stack split into one tensor per expert."""
    match = _EXPERT_STACK.match(name)
    if match:
        prefix, kind = match.groups()
        if kind == "gate_up_proj":
            hidden = tensor.shape[1] // 2
            return [pair for j in range(tensor.shape[0])
                    for pair in ((f"{prefix}.{j}.gate_proj.weight", tensor[j, :hidden].contiguous()),
                                 (f"{prefix}.{j}.up_proj.weight", tensor[j, hidden:].contiguous()))]
        return [(f"{prefix}.{j}.down_proj.weight", tensor[j].contiguous()) for j in range(tensor.shape[0])]
    name = name.replace(".mlp.gate.e_score_correction_bias", ".mlp.experts.e_score_correction_bias")
    name = name.replace(".mlp.shared_experts.", ".mlp.shared_expert.")
    return [(name, tensor.contiguous())]


def to_hub_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Runtime names and fused expert stacks → the on-disk Hugging Face layout."""
    return {hub: t for name, tensor in state.items() for hub, t in hub_tensors(name, tensor)}


def from_hub_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The on-disk layout (or transformers' fused runtime layout) → lagoon's runtime names."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for name, tensor in state.items():
        match = _EXPERT_SPLIT.match(name)
        if match:
            prefix, index, kind = match.groups()
            experts.setdefault(prefix, {}).setdefault(int(index), {})[kind] = tensor
            continue
        name = name.replace(".mlp.experts.e_score_correction_bias", ".mlp.gate.e_score_correction_bias")
        name = name.replace(".mlp.shared_expert.", ".mlp.shared_experts.")
        out[name] = tensor
    for prefix, by_index in experts.items():
        count = max(by_index) + 1
        missing = [j for j in range(count) if set(by_index.get(j, {})) != {"gate_proj", "up_proj", "down_proj"}]
        if missing:
            raise LagoonError(f"checkpoint is missing weights of expert {missing[0]} in {prefix}")
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat([by_index[j]["gate_proj"], by_index[j]["up_proj"]], dim=0) for j in range(count)])
        out[f"{prefix}.down_proj"] = torch.stack([by_index[j]["down_proj"] for j in range(count)])
    return out
