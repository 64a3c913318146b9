"""SDCHooks in one process: a checkpoint carries the verified digest, and a restore that differs from it is refused."""

from __future__ import annotations

import pytest
import torch

from lagoon.config import load_config
from lagoon.errors import LagoonError
from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.optim import build_optimizer
from lagoon.sdc.checker import decode_digest
from lagoon.sdc.hooks import SDCHooks, sdc_hooks
from lagoon.sdc.inject import flip_bit
from lagoon.train.hooks import HookContext

MODEL = {"vocab_size": 64, "hidden_size": 32, "head_dim": 16, "num_hidden_layers": 1, "intermediate_size": 64}


def _context(model, optimizer, config, run_dir, step: int, digest: str | None = None) -> HookContext:
    return HookContext(step=step, model=model, optimizer=optimizer, group=None, rank=0, world_size=1,
                       run_dir=run_dir, config=config, sdc_digest=digest)


def test_checkpoint_digest_is_stored_and_a_changed_restore_is_refused(tmp_path):
    config = load_config(None, ["train.steps=10", "train.checkpoint_every=5"])
    model = LagunaForCausalLM(preset_config("tiny", **MODEL))
    optimizer = build_optimizer(model, config.optim)
    hooks = SDCHooks(config.sdc)
    save = _context(model, optimizer, config, tmp_path, step=5)
    hooks.after_optimizer_step(save)
    assert save.metrics["sdc/checks"] == 1.0  # step 5 is a checkpoint step: checked
    hooks.before_checkpoint_save(save)
    names_hash, table = decode_digest(save.sdc_digest)
    assert table.shape == (len(list(model.parameters())), 4)
    hooks.after_checkpoint_load(_context(model, optimizer, config, tmp_path, step=5, digest=save.sdc_digest))
    flip_bit(model.lm_head.weight.data, 7, "mantissa")
    with pytest.raises(LagoonError, match="lm_head.weight") as error:
        hooks.after_checkpoint_load(_context(model, optimizer, config, tmp_path, step=5, digest=save.sdc_digest))
    assert "changed after it was written" in str(error.value)


def test_hooks_come_from_the_config_and_stay_out_of_the_way_when_disabled(tmp_path):
    assert len(sdc_hooks(load_config(None))) == 1
    assert sdc_hooks(load_config(None, ["sdc.enabled=false"])) == []
    drill = load_config(None, ["sdc.enabled=false", "train.steps=4"],
                        base={"sdc": {"faults": [{"kind": "bitflip", "step": 2, "bit": "sign"}]}})
    (hooks,) = sdc_hooks(drill)
    model = LagunaForCausalLM(preset_config("tiny", **MODEL))
    optimizer = build_optimizer(model, drill.optim)
    first = next(model.parameters())
    before = first.detach().view(-1)[0].item()
    ctx = _context(model, optimizer, drill, tmp_path, step=2)
    hooks.after_optimizer_step(ctx)  # only the fault fires: no checks, no digest
    assert first.detach().view(-1)[0].item() == -before and ctx.metrics["sdc/checks"] == 0.0
    hooks.before_checkpoint_save(ctx)
    assert ctx.sdc_digest is None
    assert torch.isfinite(first).all()
