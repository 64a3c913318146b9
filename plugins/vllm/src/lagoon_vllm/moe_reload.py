"""Putting a weight update's expert weights into vLLM's CPU MoE kernels the way a fresh load does.

vLLM 0.32's in-place reload (``initialize_layerwise_reload``/``finalize_layerwise_reload``, also behind its
own ``reload_weights``) gets a CPU MoE layer wrong: the experts' weights, which the CPU kernels hold prepacked
(``cpu_prepack_moe_weight``, after zero-padding the expert width to the kernel's alignment), come out different
from what a fresh load of the same checkpoint packs (or, when padding is needed, loading fails with a shape
error), and the router's ``e_score_correction_bias`` keeps its old values. So the expert tensors skip vLLM's
reload (which then puts the layer's own tensors back as they were) and are applied here, with a fresh load as
the reference: stacked as vLLM's loader does (w13 = gate rows then up rows, each at the start of its padded
half; w2 = down), packed with the same op, copied into the layer's existing tensors (the kernels keep
references to them); the correction bias is copied in place too.
"""

from __future__ import annotations

import re

import torch

_EXPERT = re.compile(r"^(.*)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
_BIAS = re.compile(r"^(.*)\.mlp\.experts\.e_score_correction_bias$")


def _isa(layer) -> str:
    """The instruction set the layer's CPU experts were built for ("vec", "amx", ...)."""
    kernel = getattr(getattr(layer, "quant_method", None), "moe_kernel", None)
    seen, stack = set(), [kernel]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(getattr(item, "isa", None), str):
            return item.isa
        stack += [v for v in vars(item).values() if hasattr(v, "__dict__") and not isinstance(v, torch.Tensor)] \
            if hasattr(item, "__dict__") else []
    return "vec"


@torch.no_grad()
def restore_moe_weights(model: torch.nn.Module, received: dict[str, torch.Tensor]) -> None:
    """Repack each MoE layer's received experts (hub names) into its kernel tensors; set its correction bias."""
    from vllm._custom_ops import cpu_prepack_moe_weight
    from vllm.platforms import current_platform

    if not received or not current_platform.is_cpu():
        return
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    biases: dict[str, torch.Tensor] = {}
    for name, tensor in received.items():
        if match := _EXPERT.match(name):
            prefix, index, kind = match.groups()
            experts.setdefault(prefix, {}).setdefault(int(index), {})[kind] = tensor
        elif match := _BIAS.match(name):
            biases[match.group(1)] = tensor
    for name, layer in model.named_modules():
        if not hasattr(layer, "w13_weight") or not hasattr(layer, "w2_weight"):
            continue
        prefix = name.split(".mlp.")[0]
        by_index = experts.get(prefix)
        if by_index:
            E, padded2, D = layer.w13_weight.shape
            P, F = padded2 // 2, by_index[0]["gate_proj"].shape[0]
            w13 = torch.zeros(E, 2 * P, D, dtype=layer.w13_weight.dtype)
            w2 = torch.zeros(E, D, P, dtype=layer.w2_weight.dtype)
            for j in range(E):
                w13[j, :F] = by_index[j]["gate_proj"]
                w13[j, P:P + F] = by_index[j]["up_proj"]
                w2[j, :, :F] = by_index[j]["down_proj"]
            isa = _isa(layer)
            layer.w13_weight.data.copy_(cpu_prepack_moe_weight(w13, isa))
            layer.w2_weight.data.copy_(cpu_prepack_moe_weight(w2, isa))
        if prefix in biases:
            for holder in (layer, *[m for m in vars(layer).values() if hasattr(m, "e_score_correction_bias")]):
                bias = getattr(holder, "e_score_correction_bias", None)
                if isinstance(bias, torch.Tensor):
                    bias.data.copy_(biases[prefix].to(bias.dtype))
