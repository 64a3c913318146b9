"""Fault injection flips the named bit in each float layout; the [sdc] config rejects bad values in one line."""

from __future__ import annotations

import math

import pytest
import torch

from lagoon.config import load_config
from lagoon.errors import ConfigError, LagoonError
from lagoon.sdc.config import FaultSpec
from lagoon.sdc.inject import FaultInjector, bit_index, flip_bit


@pytest.mark.parametrize("dtype,sign,exponent", [(torch.float32, 31, 23), (torch.bfloat16, 15, 7),
                                                 (torch.float16, 15, 10), (torch.float64, 63, 52)])
def test_named_bits_do_what_they_say(dtype, sign, exponent):
    assert bit_index(dtype, "sign") == sign and bit_index(dtype, "exponent") == exponent
    assert bit_index(dtype, "mantissa") == 0
    tensor = torch.tensor([1.5, -3.0], dtype=dtype)
    old, new = flip_bit(tensor, 0, "sign")
    assert (old, new) == (1.5, -1.5)
    old, new = flip_bit(tensor, 1, "exponent")  # the lowest exponent bit doubles or halves the value
    assert new in (old * 2, old / 2)
    value = tensor[0].item()
    old, new = flip_bit(tensor, 0, "mantissa")  # one ulp
    assert new != old and math.isclose(new, old, rel_tol=1e-2)
    flip_bit(tensor, 0, "mantissa")
    assert tensor[0].item() == value  # flipping twice restores the bits


def test_integer_tensors_and_out_of_range_requests():
    tensor = torch.tensor([5, 6], dtype=torch.int32)
    flip_bit(tensor, 1, "sign")
    assert tensor[1].item() == 6 - 2**31
    with pytest.raises(LagoonError, match="no exponent bits"):
        flip_bit(tensor, 0, "exponent")
    with pytest.raises(LagoonError, match="out of range"):
        flip_bit(tensor, 2, "sign")
    with pytest.raises(LagoonError, match="does not exist"):
        flip_bit(torch.zeros(2, dtype=torch.bfloat16), 0, "16")


def test_injector_fires_once_unless_repeated_and_only_on_its_rank():
    model = torch.nn.Linear(4, 4)
    faults = [FaultSpec(kind="bitflip", step=3, rank=1, parameter="weight", bit="sign"),
              FaultSpec(kind="bitflip", step=3, rank=0, parameter="bias", element=2, bit="sign", repeat=True)]
    rank1, rank0 = FaultInjector(faults, rank=1, say=lambda m: None), FaultInjector(faults, rank=0, say=lambda m: None)
    weight = model.weight.detach().clone()
    assert rank1.after_step(2, model) == []
    assert [r["parameter"] for r in rank1.after_step(3, model)] == ["weight"]
    assert model.weight[0, 0].item() == -weight[0, 0].item()
    assert rank1.after_step(3, model) == []  # a replayed step does not fire a transient fault again
    assert len(rank0.after_step(3, model)) == 1 and len(rank0.after_step(3, model)) == 1  # repeat: persistent
    with pytest.raises(LagoonError, match="no parameter 'nope'"):
        FaultInjector([FaultSpec(kind="bitflip", step=1, parameter="nope")], rank=0).after_step(1, model)


def test_raise_fault_raises():
    from lagoon.sdc.inject import InjectedFault

    injector = FaultInjector([FaultSpec(kind="raise", step=2, rank=0)], rank=0)
    with pytest.raises(InjectedFault, match="rank 0 raises after step 2"):
        injector.after_step(2, torch.nn.Linear(2, 2))


def test_sdc_config_section_loads_and_validates():
    config = load_config(None, ["sdc.interval=10", "sdc.policy=\"fail\""],
                         base={"sdc": {"faults": [{"kind": "bitflip", "step": 5, "rank": 1, "bit": "mantissa"}]}})
    assert config.sdc.interval == 10 and config.sdc.policy == "fail" and config.sdc.faults[0].bit == "mantissa"
    for override, field in [("sdc.interval=0", "sdc.interval"), ("sdc.lanes=9", "sdc.lanes"),
                            ("sdc.policy=\"retry\"", "sdc.policy"), ("sdc.grad_spike_factor=0.5", "sdc.grad_spike_factor")]:
        with pytest.raises(ConfigError) as error:
            load_config(None, [override])
        assert error.value.field == field
    with pytest.raises(ConfigError) as error:
        load_config(None, base={"sdc": {"faults": [{"kind": "bitflip", "bit": "top"}]}})
    assert error.value.field == "sdc.faults[0].bit"


def test_the_drill_config_loads_and_names_a_real_parameter():
    from lagoon.model import LagunaForCausalLM
    from tests.sdc.conftest import ROOT

    config = load_config(ROOT / "configs" / "sdc_drill.toml")
    names = dict(LagunaForCausalLM(config.model).named_parameters())
    assert config.sdc.faults and all(fault.parameter in names for fault in config.sdc.faults)
    assert config.data.global_batch_size % 2 == 0 and config.data.global_batch_size % 3 == 0
