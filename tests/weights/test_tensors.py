"""One naming and ordering: streams of (name, tensor) in the fixed order are checked, digested and written
exactly as a model is, and runtime <-> hub names round-trip."""

from __future__ import annotations

import pytest
import torch

from lagoon.errors import LagoonError
from lagoon.model import LagunaForCausalLM, from_pretrained, preset_config
from lagoon.rl.config import WeightsConfig
from lagoon.weights.publish import WeightPublisher
from lagoon.weights.tensors import (LayoutCheck, expected_layout, from_hub_state_dict, layout_of, ordered_tensors,
                                    to_hub_state_dict, weights_digest)


def _model(seed: int = 0) -> LagunaForCausalLM:
    torch.manual_seed(seed)
    return LagunaForCausalLM(preset_config("tiny", num_hidden_layers=2, vocab_size=128))


def test_a_stream_in_the_fixed_order_is_the_model_and_anything_else_is_refused():
    model = _model()
    pairs = list(ordered_tensors(model))
    assert [name for name, _ in pairs] == sorted(name for name, _ in pairs)
    assert weights_digest(iter(pairs)) == weights_digest(model) == weights_digest(dict(pairs))
    assert expected_layout(model.config) == layout_of(model)
    with pytest.raises(LagoonError, match="sorted-name order"):
        list(ordered_tensors(iter(pairs[::-1])))
    check = LayoutCheck(layout_of(model))
    for name, tensor in pairs[:-1]:
        check(name, tensor)
    with pytest.raises(LagoonError, match="ended after"):
        check.finish()
    with pytest.raises(LagoonError, match="layout expects"):
        LayoutCheck(layout_of(model))(pairs[1][0], pairs[1][1])


def test_hub_names_round_trip():
    state = dict(ordered_tensors(_model()))
    hub = to_hub_state_dict(state)
    assert any(".mlp.experts.0.gate_proj.weight" in name for name in hub)
    back = from_hub_state_dict(hub)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_publishing_a_stream_writes_the_same_version_as_the_model(tmp_path):
    model = _model(seed=3)
    config = WeightsConfig(transfer="files")
    by_model = WeightPublisher(config, tmp_path / "a", []).publish(model, 1)
    # A sharded trainer hands over full tensors one at a time (a generator, consumed once).
    stream = ((name, tensor.clone()) for name, tensor in ordered_tensors(model))
    by_stream = WeightPublisher(config, tmp_path / "b", []).publish(stream, 1, config=model.config)
    assert by_model["digest"] == by_stream["digest"] == weights_digest(model)
    loaded = from_pretrained(by_stream["path"], dtype=torch.float32)
    assert weights_digest(loaded) == weights_digest(model)
    with pytest.raises(LagoonError, match="needs the model's config"):
        WeightPublisher(config, tmp_path / "c", []).publish(iter(list(ordered_tensors(model))), 1)
