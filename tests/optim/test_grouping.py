"""Parameter routing by name: Laguna's parameters land where docs/distributed_muon.md says, exactly once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lagoon.config import load_config
from lagoon.errors import ConfigError
from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.optim import OptimConfig, ParameterGroups, check_partition, group_parameters


@pytest.fixture(scope="module")
def model():
    return LagunaForCausalLM(preset_config("tiny", num_hidden_layers=2, vocab_size=256))


def _where(groups: ParameterGroups) -> dict[str, str]:
    return {name: group for group, names in groups.named().items() for name in names}


def test_laguna_routing(model):
    groups = group_parameters(model)
    where = _where(groups)
    assert set(where) == {name for name, _ in model.named_parameters()}
    expect = {
        "model.embed_tokens.weight": "adamw", "lm_head.weight": "adamw", "model.norm.weight": "adamw_no_decay",
        "model.layers.0.self_attn.q_norm.weight": "adamw_no_decay", "model.layers.0.input_layernorm.weight": "adamw_no_decay",
        "model.layers.0.self_attn.q_proj.weight": "muon", "model.layers.0.self_attn.g_proj.weight": "muon",
        "model.layers.0.self_attn.o_proj.weight": "muon", "model.layers.0.mlp.gate_proj.weight": "muon",
        "model.layers.1.mlp.gate.weight": "adamw", "model.layers.1.mlp.gate.e_score_correction_bias": "frozen",
        "model.layers.1.mlp.experts.gate_up_proj": "muon", "model.layers.1.mlp.experts.down_proj": "muon",
        "model.layers.1.mlp.shared_experts.up_proj.weight": "muon",
    }
    for name, group in expect.items():
        assert where[name] == group, name
    matrices = {m.name: m for m in groups.muon}
    gate_up = matrices["model.layers.1.mlp.experts.gate_up_proj"]
    assert (gate_up.count, gate_up.rows, gate_up.cols) == (16, 128, 128)  # 8 experts × (gate, up), [F, D] each
    down = matrices["model.layers.1.mlp.experts.down_proj"]
    assert (down.count, down.rows, down.cols) == (8, 128, 128)


def test_switches(model):
    where = _where(group_parameters(model, OptimConfig(router="muon", split_gate_up=False)))
    assert where["model.layers.1.mlp.gate.weight"] == "muon"
    joint = {m.name: m for m in group_parameters(model, OptimConfig(split_gate_up=False)).muon}
    assert joint["model.layers.1.mlp.experts.gate_up_proj"].shape == (256, 128)
    everything_adamw = group_parameters(model, OptimConfig(name="adamw"))
    assert not everything_adamw.muon
    assert _where(everything_adamw)["model.layers.0.self_attn.q_proj.weight"] == "adamw"


def test_left_out_parameter_fails_the_assert(model):
    class WithStray(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model
            self.mystery = nn.Parameter(torch.zeros(2, 3, 4))  # matches no rule

    with pytest.raises(AssertionError, match="mystery"):
        group_parameters(WithStray())


def test_partition_check_catches_duplicates_and_omissions(model):
    groups = group_parameters(model)
    doubled = ParameterGroups(muon=groups.muon, adamw=groups.adamw + groups.adamw[:1],
                              adamw_no_decay=groups.adamw_no_decay, frozen=groups.frozen)
    with pytest.raises(AssertionError, match="two optimizer groups"):
        check_partition(model, doubled)
    dropped = ParameterGroups(muon=groups.muon[1:], adamw=groups.adamw, adamw_no_decay=groups.adamw_no_decay,
                              frozen=groups.frozen)
    with pytest.raises(AssertionError, match=groups.muon[0].name):
        check_partition(model, dropped)


def test_optim_config_section(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[optim]\nname = "muon"\nlr = 0.01\nns_coefficients = "polar_express"\n')
    config = load_config(path)
    assert config.optim.lr == 0.01 and config.optim.ns_coefficients == "polar_express"
    for override, field in [("optim.momentum=1.0", "optim.momentum"), ("optim.ns_dtype=\"fp8\"", "optim.ns_dtype"),
                            ("optim.adamw_betas=[0.9]", "optim.adamw_betas"), ("optim.distributed=\"zero3\"", "optim.distributed")]:
        with pytest.raises(ConfigError) as info:
            load_config(path, [override])
        assert info.value.field == field
