"""`lagoon plan`'s figures against memory measured on CPU at small shapes (within 15%): the activations autograd
keeps for the backward pass (every saved tensor's storage, counted once, during a real forward) and the
parameter, gradient and optimizer bytes the engine holds (`Engine.state_bytes` after a real backward)."""

from __future__ import annotations

import pytest
import torch

from lagoon.cli import main
from lagoon.configio import from_dict
from lagoon.model.config import ModelConfig
from lagoon.optim import OptimConfig
from lagoon.parallel.config import ParallelConfig
from lagoon.parallel.plan import activation_bytes, state_bytes
from tests.train.test_engine_layouts import XS2_SMALL


def _config(**overrides) -> ModelConfig:
    return from_dict(ModelConfig, {**XS2_SMALL, "vocab_size": 300, **overrides}, "model")


def _saved_bytes(model, input_ids) -> int:
    """Bytes of the distinct storages autograd saves during one forward with a loss (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids, targets=input_ids).loss.backward()
    return sum(seen.values())


@pytest.mark.parametrize("batch, seq_len, overrides", [(2, 32, {}), (4, 64, {}),
                                                       (3, 48, {"num_experts": 8, "gating": "per-element"})])
def test_activation_figure_matches_what_autograd_keeps(batch, seq_len, overrides):
    from lagoon.model import LagunaForCausalLM

    torch.manual_seed(0)
    config = _config(**overrides)
    model = LagunaForCausalLM(config)
    measured = _saved_bytes(model, torch.randint(0, config.vocab_size, (batch, seq_len)))
    planned = activation_bytes(config, batch, seq_len, 4, "none")
    assert abs(planned - measured) <= 0.15 * measured, (planned, measured)


def test_state_figure_matches_the_engine(tmp_path):
    from lagoon.parallel.engine import Engine
    from lagoon.train.distributed import setup

    config, optim = _config(), OptimConfig(ns_dtype="float32")
    engine = Engine.build(config, ParallelConfig(), optim, setup("cpu"), seed=0)
    input_ids = torch.randint(0, config.vocab_size, (2, 16))
    engine.model(input_ids, targets=input_ids).loss.backward()
    measured = engine.state_bytes()
    planned = dict(zip(("params", "grads", "optimizer"), state_bytes(config, optim, 1, 1, "none")))
    for key, value in measured.items():
        assert abs(planned[key] - value) <= 0.15 * value, (key, planned[key], value)


def test_checkpointing_shrinks_the_figure_and_the_command_prints_it(capsys):
    config = _config(num_hidden_layers=6)
    none, selective, full = (activation_bytes(config, 2, 64, 4, mode) for mode in ("none", "selective", "full"))
    assert full < selective < none
    assert main(["plan", "configs/scale/laguna_xs2_rl.toml", "--gpus", "8", "--gpu-memory-gb", "80", "--role", "rl"]) == 0
    out = capsys.readouterr().out
    assert "fsdp (dp_replicate=1 × dp_shard=6) on 6 trainer rank(s), 2 inference server(s)" in out
    assert "largest micro-batch that fits" in out and "FITS" in out
    assert main(["plan", "configs/scale/laguna_xs2_rl.toml", "--gpus", "4", "--gpu-memory-gb", "80", "--role", "rl"]) == 2
    assert "need 8 GPUs, the plan has 4" in capsys.readouterr().err
