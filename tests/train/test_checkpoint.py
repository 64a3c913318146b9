"""The checkpoint directory contract: atomic writes, SHA-256 manifest, corruption detection, keep_last."""

from __future__ import annotations

import json

import torch

from lagoon.model import LagunaForCausalLM, from_pretrained, preset_config
from lagoon.optim import OptimConfig, build_optimizer
from lagoon.parallel import checkpoint as sharded
from lagoon.train import checkpoint as ckpt
from lagoon.train.rng import capture_rng, restore_rng
from lagoon.cli import main


def _model() -> LagunaForCausalLM:
    return LagunaForCausalLM(preset_config("tiny", hidden_size=32, head_dim=16, num_hidden_layers=2,
                                           intermediate_size=64, moe_intermediate_size=32,
                                           shared_expert_intermediate_size=32, vocab_size=300))


def _save(run_dir, model, step, keep_last=5):
    state = ckpt.CheckpointState(step=step, tokens_seen=step * 100, world_size=2, sdc_digest=f"digest-{step}",
                                 last_metrics={"loss": 1.5, "eval_bpb/code": 2.0})
    optimizer = build_optimizer(model, OptimConfig())
    optimizer.step_count = step
    for momentum in optimizer.momentum.values():
        momentum.fill_(float(step))
    return sharded.save(run_dir, model, optimizer, state, {"step": step}, capture_rng(), None, keep_last)


def test_checkpoint_round_trip_loads_as_hugging_face(tmp_path):
    model = _model()
    path = _save(tmp_path, model, 7)
    assert path.name == "step_00000007" and ckpt.verify(path) is None
    manifest = json.loads((path / "manifest.json").read_text())
    assert {"config.json", "dcp/.metadata", "dcp/__0_0.distcp", "train_state/state.json",
            "train_state/loader.json", "train_state/rng_rank0.json"} <= set(manifest["files"])
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    state = ckpt.read_state(path)
    assert (state.step, state.tokens_seen, state.sdc_digest) == (7, 700, "digest-7")
    assert ckpt.read_loader_state(path) == {"step": 7}
    assert ckpt.read_rng_state(path, 3) == ckpt.read_rng_state(path, 0)   # a bigger world falls back to rank 0
    optimizer = build_optimizer(model, OptimConfig())
    sharded.load(path, model, optimizer, distributed=False)
    assert optimizer.step_count == 7
    assert all(torch.equal(m, torch.full_like(m, 7.0)) for m in optimizer.momentum.values())
    loaded = from_pretrained(path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    exported = tmp_path / "hf"
    assert main(["export", "hf", str(path), str(exported)]) == 0
    assert (exported / "model.safetensors").is_file()


def test_corrupted_checkpoints_are_skipped_with_reasons(tmp_path):
    model = _model()
    for step in (1, 2, 3, 4):
        _save(tmp_path, model, step)
    root = tmp_path / "checkpoints"
    weights = root / "step_00000004" / "dcp" / "__0_0.distcp"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    (root / "step_00000003" / "train_state" / "loader.json").unlink()
    (root / "step_00000002" / "manifest.json").unlink()
    (root / ".step_00000005.tmp-999").mkdir()
    messages: list[str] = []
    ckpt.remove_staging(root, messages.append)
    chosen = ckpt.newest_verified(tmp_path, messages.append)
    assert chosen == root / "step_00000001"
    assert "interrupted checkpoint write" in messages[0] and not (root / ".step_00000005.tmp-999").exists()
    assert "step_00000004" in messages[1] and "dcp/__0_0.distcp does not match its SHA-256" in messages[1]
    assert "step_00000003" in messages[2] and "loader.json is missing" in messages[2]
    assert "step_00000002" in messages[3] and "no manifest.json" in messages[3]


def test_keep_last_prunes_oldest(tmp_path):
    model = _model()
    for step in (10, 20, 30):
        _save(tmp_path, model, step, keep_last=2)
    assert [p.name for _, p in ckpt.step_dirs(tmp_path / "checkpoints")] == ["step_00000030", "step_00000020"]


def test_rng_states_round_trip():
    import random

    import numpy as np

    state = capture_rng()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(2), random.random()
    restore_rng(json.loads(json.dumps(state)))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all() and expected[2] == again[2]
