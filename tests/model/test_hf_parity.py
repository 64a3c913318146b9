"""lagoon's Laguna equals transformers' LagunaForCausalLM, logit for logit, in both directions."""

from __future__ import annotations

import warnings

import pytest
import torch

from lagoon.model import LagunaForCausalLM, from_pretrained, preset_config, save_pretrained
from tests.conftest import run_lagoon

transformers = pytest.importorskip("transformers")

YARN = {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 8.0, "original_max_position_embeddings": 64,
        "beta_fast": 32.0, "beta_slow": 1.0, "partial_rotary_factor": 0.5}

# Together these exercise every option: sliding + full layers, per-layer heads, both gating modes,
# soft-capping, dense and sparse layers, shared expert, routed scaling, YaRN (with and without an
# explicit attention factor), attention biases and tied embeddings.
CASES = {
    "sliding-full-per-head": dict(
        num_hidden_layers=4, sliding_window=5, gating=True, moe_routed_scaling_factor=2.5,
        attention_heads_by_type={"full_attention": 2, "sliding_attention": 4}, num_dense_layers=1),
    "per-element-softcap-yarn": dict(
        num_hidden_layers=3, sliding_window=3, gating="per-element", moe_router_logit_softcapping=2.0,
        attention_pattern=["sliding_attention", "full_attention"], num_dense_layers=0,
        rope_parameters={"full_attention": {**YARN, "attention_factor": 1.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0}}),
    "yarn-mscale-all-global-bias-tied": dict(
        num_hidden_layers=3, attention_pattern=["full_attention"], gating=False, attention_bias=True,
        tie_word_embeddings=True, num_dense_layers=2, num_experts=6, num_experts_per_tok=3,
        rope_parameters={"full_attention": {**YARN, "partial_rotary_factor": 1.0}}),
    "all-sparse-topk1-scaled": dict(
        num_hidden_layers=2, num_dense_layers=0, num_experts=4, num_experts_per_tok=1,
        moe_routed_scaling_factor=0.7, sliding_window=4, gating="per-head"),
}


def _random_model(overrides: dict) -> LagunaForCausalLM:
    config = preset_config("tiny", vocab_size=97, hidden_size=48, head_dim=12, num_key_value_heads=2,
                           num_attention_heads=4, intermediate_size=40, moe_intermediate_size=24,
                           shared_expert_intermediate_size=20, **overrides)
    model = LagunaForCausalLM(config)
    with torch.no_grad():
        # Perturb every tensor that initialises to a constant so the comparison sees it.
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.1)
            else:
                param.normal_(0, 0.15)
    return model.eval()


def _hf_model(directory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.LagunaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_loads_in_transformers_with_identical_logits(case, tmp_path):
    model = _random_model(CASES[case])
    save_pretrained(model, tmp_path / "export")
    reference = _hf_model(tmp_path / "export")
    input_ids = torch.randint(0, model.config.vocab_size, (2, 13))
    with torch.no_grad():
        ours = model(input_ids).logits
        theirs = reference(input_ids).logits
    assert ours.shape == (2, 13, model.config.vocab_size)
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("case", sorted(CASES))
def test_transformers_checkpoint_imports_with_identical_logits(case, tmp_path):
    config = _random_model(CASES[case]).config
    hf_config = transformers.LagunaConfig(**{k: v for k, v in config.to_hf_dict().items()
                                              if k not in ("architectures", "model_type")})
    reference = transformers.LagunaForCausalLM(hf_config).eval()
    with torch.no_grad():
        for name, param in reference.named_parameters():
            param.copy_(torch.randn_like(param) * (0.1 if ("norm" in name or "bias" in name) else 0.15)
                        + (1.0 if "norm" in name else 0.0))
    reference.save_pretrained(tmp_path / "hf")
    result = run_lagoon("import", "hf", str(tmp_path / "hf"), str(tmp_path / "lagoon"))
    assert result.returncode == 0, result.stderr
    model = from_pretrained(tmp_path / "lagoon").eval()
    input_ids = torch.randint(0, config.vocab_size, (2, 11))
    with torch.no_grad():
        assert (model(input_ids).logits - reference(input_ids).logits).abs().max().item() <= 1e-4


def test_export_command_round_trips_bf16(tmp_path):
    model = _random_model(CASES["sliding-full-per-head"])
    save_pretrained(model, tmp_path / "src")
    result = run_lagoon("export", "hf", str(tmp_path / "src"), str(tmp_path / "out"), "--dtype", "bfloat16")
    assert result.returncode == 0, result.stderr
    reloaded = from_pretrained(tmp_path / "out")
    assert reloaded.lm_head.weight.dtype == torch.bfloat16
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values()):
        assert torch.equal(a.to(b.dtype), b) or name.endswith("e_score_correction_bias"), name
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging debris


def test_from_pretrained_rejects_mismatched_weights(tmp_path):
    model = _random_model(CASES["sliding-full-per-head"])
    save_pretrained(model, tmp_path / "ck")
    config_path = tmp_path / "ck" / "config.json"
    config_path.write_text(config_path.read_text().replace('"hidden_size": 48', '"hidden_size": 24'))
    result = run_lagoon("export", "hf", str(tmp_path / "ck"), str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
