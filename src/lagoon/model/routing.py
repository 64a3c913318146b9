"""Reading and replaying a Laguna's expert routing, from outside the model.

- `RoutingCapture`: the expert ids every sparse layer's router chose in a forward pass (the inference
  engine records them per token, so the trainer can replay them).
- `RoutingReplay`: make every sparse layer route each token to given experts — the rollout engine's choice —
  while the gate weights come from the layer's own router over its full logits (Router's ``experts_Nk``),
  so the router still gets gradients (routing replay, "R3": MoE policies drift between inference and
  training when the two pick different experts).

Both work through hooks on each `Router`, so `model.moe` and the forward pass stay as they are. Experts are
given per sparse layer (in `model.moe_blocks()` order) as [B, T, k] (or [N, k]) integer tensors aligned with
the forward's input ids; −1 marks a token without a recorded choice (it routes as usual).

Shape legend: B batch rows, T positions, N = B·T tokens, L sparse layers, k experts per token.
"""

from __future__ import annotations

import torch

from lagoon.model.moe import MoE


def routers(model) -> list:
    return [block.gate for block in model.modules() if isinstance(block, MoE)]


class RoutingCapture:
    """Context manager: ``capture.experts_LNk`` holds the [L, N, k] experts of the last forward pass inside."""

    def __init__(self, model):
        self.model = model
        self.layers: list[torch.Tensor] = []
        self.handles = []

    def __enter__(self) -> "RoutingCapture":
        self.layers = []
        for router in routers(self.model):
            self.handles.append(router.register_forward_hook(self._record))
        return self

    def _record(self, module, args, output) -> None:
        self.layers.append(output[2].detach())

    @property
    def experts_LNk(self) -> torch.Tensor | None:
        return torch.stack(self.layers) if self.layers else None

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


class RoutingReplay:
    """Context manager: route every sparse layer by ``experts_LBTk`` ([L, B, T, k], −1 = the router's choice)."""

    def __init__(self, model, experts_LBTk: torch.Tensor):
        self.model = model
        self.blocks = routers(model)
        assert experts_LBTk.shape[0] == len(self.blocks), "one expert table per sparse layer"
        self.experts_LBTk = experts_LBTk
        self.handles = []

    def __enter__(self) -> "RoutingReplay":
        for index, router in enumerate(self.blocks):
            self.handles.append(router.register_forward_pre_hook(self._inject(index), with_kwargs=True))
        return self

    def _inject(self, index: int):
        def hook(module, args, kwargs):
            given = self.experts_LBTk[index]
            return args, {**kwargs, "experts_Nk": given.reshape(-1, given.shape[-1]).to(args[0].device)}
        return hook

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def topk_disagreement(model, input_ids_BT: torch.Tensor, experts_LBTk: torch.Tensor,
                      document_ids_BT: torch.Tensor | None = None) -> tuple[float, int]:
    """(tokens × layers whose own top-k set differs from the given one, tokens × layers compared), over
    entries with a recorded choice. Diagnoses how often training would route differently without replay."""
    with torch.no_grad(), RoutingCapture(model) as capture:
        model(input_ids_BT, document_ids=document_ids_BT, return_logits=False)
    own_LNk = capture.experts_LNk
    given_LNk = experts_LBTk.reshape(own_LNk.shape).to(own_LNk.device)
    recorded_LN = (given_LNk >= 0).all(-1)
    same_LN = (own_LNk.sort(-1).values == given_LNk.sort(-1).values).all(-1)
    return float((~same_LN & recorded_LN).sum()), int(recorded_LN.sum())
