"""Laguna's sigmoid routing on vLLM's CPU MoE router.

vLLM picks a router per MoE layer in ``router_factory.create_fused_moe_router``. On CPU every layer gets
``CPURouter``, whose non-grouped path supports softmax scoring only (it asserts it) while its grouped path
supports sigmoid with a correction bias. With one group and ``topk_group = 1`` the grouped path masks
nothing: it takes top-k of sigmoid(logits) + bias and returns the unbiased sigmoid scores of the chosen
experts, renormalized — the same selection and weights as Laguna's (and lagoon's) router.
"""

from __future__ import annotations

import functools

_PATCHED = "_lagoon_sigmoid_routing"


def _wrap(create):
    @functools.wraps(create)
    def create_fused_moe_router(*args, **kwargs):
        from vllm.platforms import current_platform

        if (current_platform.is_cpu() and kwargs.get("scoring_func") == "sigmoid"
                and not kwargs.get("use_grouped_topk") and kwargs.get("custom_routing_function") is None):
            kwargs.update(use_grouped_topk=True, num_expert_group=1, topk_group=1)
        return create(*args, **kwargs)

    setattr(create_fused_moe_router, _PATCHED, True)
    return create_fused_moe_router


def patch_cpu_sigmoid_routing() -> None:
    """Wrap the router factory where vLLM's MoE layer looks it up (idempotent)."""
    from vllm.model_executor.layers.fused_moe import layer
    from vllm.model_executor.layers.fused_moe.router import router_factory

    for module in (router_factory, layer):
        create = getattr(module, "create_fused_moe_router", None)
        if create is not None and not getattr(create, _PATCHED, False):
            module.create_fused_moe_router = _wrap(create)

