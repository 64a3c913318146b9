"""Which optimizer updates which parameter, decided by name, with an exactly-once check.

Rules, first match wins (names are Laguna's, as in transformers' ``LagunaForCausalLM``):

| parameter                                    | group            | why |
|----------------------------------------------|------------------|-----|
| ``requires_grad=False`` (router ``e_score_correction_bias``) | not optimized | moved by the aux-loss-free rule, not by gradients (DeepSeek-V3 §2.1.2) |
| ``embed_tokens.weight``, ``lm_head.weight``  | AdamW, decayed   | a lookup table and the output map are not hidden linear maps (Jordan et al. 2024; Liu et al. 2025 §2) |
| ``*norm.weight`` (RMSNorm, q_norm, k_norm)   | AdamW, no decay  | vectors; decaying a norm's gain pulls it toward 0 |
| ``*.bias`` (gates' and projections' biases)  | AdamW, no decay  | vectors |
| ``mlp.gate.weight`` (router)                 | AdamW (or Muon: ``optim.router``) | see docs/distributed_muon.md |
| ``experts.gate_up_proj`` [E, 2F, D]          | Muon, 2E matrices [F, D] (gate, up per expert) | per expert, never across experts; gate and up separately (``optim.split_gate_up``) |
| ``experts.down_proj`` [E, D, F]              | Muon, E matrices [D, F] | per expert |
| other ``*_proj.weight`` (q, k, v, o, g, dense and shared MLP) | Muon | hidden linear maps |

A parameter that matches no rule is left out, and `check_partition` fails naming it: every parameter
is in exactly one group (nanoGPT's ``configure_optimizers`` check). With ``optim.name = "adamw"`` the same
rules decide decay / no decay and every matrix goes to AdamW.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from lagoon.optim.config import OptimConfig


@dataclass(eq=False)
class MatrixParam:
    """A Muon parameter: `count` matrices of `rows`×`cols` stored in `param` (a 2-D matrix or a 3-D stack)."""

    name: str
    param: nn.Parameter
    count: int
    """Matrices in this parameter: 1 for a 2-D weight, E for an expert stack, 2E for a split gate_up stack."""
    rows: int
    """fan_out of each matrix (nn.Linear layout: weight is [out, in])."""
    cols: int
    """fan_in of each matrix."""

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)


@dataclass
class ParameterGroups:
    """The partition of a model's parameters by optimizer."""

    muon: list[MatrixParam] = field(default_factory=list)
    adamw: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    """AdamW with weight decay (embeddings, LM head, router; every matrix when name = "adamw")."""
    adamw_no_decay: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    """AdamW without weight decay (norm gains, biases)."""
    frozen: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    """Not optimized (``requires_grad=False``: the router correction bias)."""

    def named(self) -> dict[str, list[str]]:
        """Parameter names per group (for logging and tests)."""
        return {"muon": [m.name for m in self.muon], "adamw": [n for n, _ in self.adamw],
                "adamw_no_decay": [n for n, _ in self.adamw_no_decay], "frozen": [n for n, _ in self.frozen]}


def _route(name: str, param: nn.Parameter, config: OptimConfig) -> str | None:
    """The group of one parameter by the table above, or None when no rule matches."""
    leaf_module = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
    if not param.requires_grad:
        return "frozen"
    if name.endswith("embed_tokens.weight") or name.endswith("lm_head.weight"):
        return "adamw"
    if "norm" in leaf_module and name.endswith(".weight") and param.dim() == 1:
        return "adamw_no_decay"
    if name.endswith(".bias") and param.dim() == 1:
        return "adamw_no_decay"
    if name.endswith("mlp.gate.weight") and param.dim() == 2:
        return "muon" if config.router == "muon" else "adamw"
    if name.endswith("experts.gate_up_proj") and param.dim() == 3:
        return "muon"
    if name.endswith("experts.down_proj") and param.dim() == 3:
        return "muon"
    if name.endswith("_proj.weight") and param.dim() == 2:
        return "muon"
    return None


def _matrix(name: str, param: nn.Parameter, config: OptimConfig) -> MatrixParam:
    if param.dim() == 2:
        return MatrixParam(name, param, 1, param.shape[0], param.shape[1])
    experts, rows, cols = param.shape
    if name.endswith("gate_up_proj") and config.split_gate_up:
        assert rows % 2 == 0, f"{name}: fused gate_up rows {rows} must be even"
        # [E, 2F, D] is contiguous as [E, 2, F, D]: matrix 2e is expert e's gate, 2e+1 its up projection.
        return MatrixParam(name, param, 2 * experts, rows // 2, cols)
    return MatrixParam(name, param, experts, rows, cols)


def group_parameters(model: nn.Module, config: OptimConfig | None = None) -> ParameterGroups:
    """Route every parameter of `model` by name; asserts each lands in exactly one group."""
    config = config or OptimConfig()
    groups = ParameterGroups()
    for name, param in model.named_parameters():
        route = _route(name, param, config)
        if route == "muon" and config.name == "adamw":
            route = "adamw"
        if route == "muon":
            groups.muon.append(_matrix(name, param, config))
        elif route is not None:
            getattr(groups, route).append((name, param))
    check_partition(model, groups)
    return groups


def check_partition(model: nn.Module, groups: ParameterGroups) -> None:
    """Assert that every parameter of `model` is in exactly one group (and nothing else is)."""
    seen: dict[int, str] = {}
    members = [(m.name, m.param) for m in groups.muon]
    members += groups.adamw + groups.adamw_no_decay + groups.frozen
    for name, param in members:
        assert id(param) not in seen, f"parameter {name} is in two optimizer groups (also as {seen[id(param)]})"
        seen[id(param)] = name
    model_params = dict(model.named_parameters())
    missing = [name for name, param in model_params.items() if id(param) not in seen]
    assert not missing, (f"parameters in no optimizer group: {', '.join(missing)} — add a rule to "
                         "lagoon.optim.grouping or give them a Laguna name")
    foreign = set(seen) - {id(p) for p in model_params.values()}
    assert not foreign, f"optimizer groups hold parameters that are not in the model: {sorted(seen[i] for i in foreign)}"
