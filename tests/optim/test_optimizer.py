"""The single-process optimizer: Muon equals torch.optim.Muon, AdamW equals torch.optim.AdamW, the contract."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lagoon.errors import LagoonError
from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.optim import OptimConfig, build_optimizer, group_parameters
from lagoon.optim.functional import muon_scale


class Matrices(nn.Module):
    """Only 2-D hidden matrices, named so that lagoon routes them all to Muon."""

    def __init__(self):
        super().__init__()
        self.up_proj = nn.Linear(24, 40, bias=False)     # wide fan_out
        self.down_proj = nn.Linear(40, 24, bias=False)   # tall → transposed inside Newton–Schulz
        self.o_proj = nn.Linear(24, 24, bias=False)      # same shape as nothing else
        self.q_proj = nn.Linear(40, 24, bias=False)      # same shape as down_proj: batched together


def _set_grads(params, seed):
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_equals_torch_muon_on_matrices(nesterov):
    ours_model = Matrices()
    torch_model = copy.deepcopy(ours_model)
    config = OptimConfig(lr=0.01, weight_decay=0.1, momentum=0.9, nesterov=nesterov, ns_steps=5,
                         ns_coefficients="quintic", ns_dtype="bfloat16", ns_matmul="native",
                         muon_scaling="match_rms_adamw")
    ours = build_optimizer(ours_model, config)
    reference = torch.optim.Muon(torch_model.parameters(), lr=0.01, weight_decay=0.1, momentum=0.9,
                                 nesterov=nesterov, adjust_lr_fn="match_rms_adamw")
    for step in range(4):
        _set_grads(ours_model.parameters(), step)
        _set_grads(torch_model.parameters(), step)
        ours.step()
        reference.step()
    for (name, a), b in zip(ours_model.named_parameters(), torch_model.parameters()):
        assert torch.equal(a, b), name
    assert not torch.equal(ours_model.up_proj.weight, Matrices().up_proj.weight)


def test_spectral_scaling_and_schedule_scale():
    """spectral = √(fan_out/fan_in); the schedule scale multiplies both the step and the decay rate."""
    assert muon_scale(40, 24, "spectral") == pytest.approx(math.sqrt(40 / 24))
    assert muon_scale(24, 40, "match_rms_adamw") == pytest.approx(0.2 * math.sqrt(40))
    model = Matrices()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = OptimConfig(lr=0.02, weight_decay=0.5, momentum=0.0, nesterov=False, ns_dtype="float32", muon_scaling="spectral")
    optimizer = build_optimizer(model, config)
    optimizer.set_lr_scale(0.25)
    _set_grads(model.parameters(), 0)
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    optimizer.step()
    from lagoon.optim import newton_schulz
    eta = 0.02 * 0.25
    for name, param in model.named_parameters():
        rows, cols = param.shape
        expected = before[name] * (1 - eta * 0.5) - eta * math.sqrt(rows / cols) * newton_schulz(grads[name], dtype="float32")
        torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-7)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(eta)


def _tiny_model():
    return LagunaForCausalLM(preset_config("tiny", num_hidden_layers=2, vocab_size=256, hidden_size=64,
                                           head_dim=16, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                                           intermediate_size=96))


def _loss(model, seed):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (2, 16), generator=generator)
    return model(ids, targets=ids).loss


def test_adamw_groups_equal_torch_adamw():
    """name = "adamw": decayed matrices and undecayed vectors match torch.optim.AdamW to one ulp (the two clip
    norms reduce in different orders, which moves a weight near 1.0 by one float32 step at some thread counts)."""
    model = _tiny_model()
    reference_model = copy.deepcopy(model)
    config = OptimConfig(name="adamw", adamw_lr=1e-3, weight_decay=0.1)
    ours = build_optimizer(model, config)
    groups = group_parameters(reference_model, config)
    reference = torch.optim.AdamW(
        [{"params": [p for _, p in groups.adamw], "weight_decay": 0.1},
         {"params": [p for _, p in groups.adamw_no_decay], "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    assert not groups.muon
    for step in range(3):
        _loss(model, step).backward()
        _loss(reference_model, step).backward()
        torch.nn.utils.clip_grad_norm_(reference_model.parameters(), 0.5)
        metrics = ours.step(max_grad_norm=0.5)
        reference.step()
        ours.zero_grad()
        reference.zero_grad()
        assert metrics["clip_coef"] < 1.0
    for (name, a), b in zip(model.named_parameters(), reference_model.parameters()):
        torch.testing.assert_close(a, b, rtol=2**-23, atol=1e-7, msg=name)


def test_step_metrics_clipping_and_nonfinite_gradients():
    model = _tiny_model()
    optimizer = build_optimizer(model, OptimConfig())
    _loss(model, 0).backward()
    expected_norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))
    metrics = optimizer.step(max_grad_norm=1e-3)
    assert metrics["grad_norm"] == pytest.approx(expected_norm, rel=1e-6)
    assert metrics["clip_coef"] == pytest.approx(1e-3 / (expected_norm + 1e-6))
    assert {"grad_norm", "lr", "adamw_lr"} <= set(metrics)
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _loss(model, 1).backward()
    model.lm_head.weight.grad[0, 0] = float("nan")
    metrics = optimizer.step()
    assert metrics.get("skipped") == 1.0 and not math.isfinite(metrics["grad_norm"])
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert optimizer.step_count == 1


def test_state_dict_round_trip_resumes_exactly(tmp_path):
    model = _tiny_model()
    optimizer = build_optimizer(model, OptimConfig())
    for step in range(2):
        _loss(model, step).backward()
        optimizer.step(1.0)
        optimizer.zero_grad()
    torch.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, tmp_path / "state.pt")
    state = optimizer.state_dict()
    assert set(state["muon"]) == {m.name for m in optimizer.groups.muon}
    assert all(set(entry) == {"momentum"} for entry in state["muon"].values())  # one state per Muon parameter

    # Continue the original, and a fresh copy restored from disk: identical parameters.
    _loss(model, 5).backward()
    optimizer.step(1.0)
    saved = torch.load(tmp_path / "state.pt")
    resumed_model = _tiny_model()
    resumed_model.load_state_dict(saved["model"])
    resumed = build_optimizer(resumed_model, OptimConfig())
    resumed.load_state_dict(saved["optim"])
    _loss(resumed_model, 5).backward()
    resumed.step(1.0)
    for (name, a), b in zip(model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(a, b), name


def test_load_state_dict_refuses_mismatches():
    model = _tiny_model()
    state = build_optimizer(model, OptimConfig()).state_dict()
    with pytest.raises(LagoonError, match="optim.name"):
        build_optimizer(model, OptimConfig(name="adamw")).load_state_dict(state)
    with pytest.raises(LagoonError, match="does not match the model"):
        build_optimizer(model, OptimConfig(router="muon")).load_state_dict(state)
    bad = {**state, "muon": dict(state["muon"])}
    name = next(iter(bad["muon"]))
    bad["muon"][name] = {"momentum": torch.zeros(3)}
    with pytest.raises(LagoonError, match="shape"):
        build_optimizer(model, OptimConfig()).load_state_dict(bad)
    with pytest.raises(LagoonError, match="format"):
        build_optimizer(model, OptimConfig()).load_state_dict({"format": "other"})
