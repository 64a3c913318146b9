"""Config loading: TOML, dotted overrides, and one-line errors that name the field."""

from __future__ import annotations

import pytest

from lagoon.config import load_config
from lagoon.errors import ConfigError
from tests.conftest import assert_one_line_error, run_lagoon


def _error(tmp_path, toml: str, *overrides: str) -> ConfigError:
    path = tmp_path / "run.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return info.value


def test_toml_file_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[model]\npreset = "tiny"\nhidden_size = 96\n')
    config = load_config(path, ["model.num_hidden_layers=6", "model.gating=\"per-element\""])
    assert config.model.hidden_size == 96 and config.model.num_hidden_layers == 6
    assert config.model.gating == "per-element"
    assert len(config.model.layer_types) == 6 and config.model.layer_types[4] == "full_attention"


@pytest.mark.parametrize("toml, overrides, field, words", [
    ('[model]\npreset = "tiny"\nnum_key_value_heads = 3\n', [], "model.num_attention_heads_per_layer[0]", "multiple"),
    ('[model]\npreset = "tiny"\n', ["model.sliding_window=0"], "model.sliding_window", "positive"),
    ('[model]\npreset = "tiny"\n', ["model.num_experts_per_tok=9"], "model.num_experts_per_tok", "top-k"),
    ('[model]\npreset = "tiny"\nlayer_types = ["full_attention"]\n', [], "model.layer_types", "one entry per layer"),
    ('[model]\npreset = "tiny"\n', ["model.mlp_layer_types=[\"dense\"]"], "model.mlp_layer_types", "one entry per layer"),
    ('[model]\npreset = "tiny"\nhiden_size = 3\n', [], "model.hiden_size", "unknown key"),
    ('[modle]\nx = 1\n', [], "modle", "unknown key"),
    ('[model]\npreset = "huge"\n', [], "model.preset", "unknown model preset"),
    ('[model]\nhidden_size = "wide"\n', [], "model.hidden_size", "integer"),
    ('[model]\ngating = "per-token"\n', [], "model.gating", "per-element"),
])
def test_bad_configs_name_the_field(tmp_path, toml, overrides, field, words):
    error = _error(tmp_path, toml, *overrides)
    assert str(error).startswith(field + ":"), str(error)
    assert words in str(error)
    assert "\n" not in str(error)


def test_cli_config_errors_exit_2_with_one_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[model]\npreset = "tiny"\nnum_key_value_heads = 3\n')
    assert_one_line_error(run_lagoon("model", "info", str(path)), "num_key_value_heads")
    assert_one_line_error(run_lagoon("model", "info", "tiny", "--set", "model.window=0"), "model.window", "unknown key")
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\n")
    assert_one_line_error(run_lagoon("model", "info", str(broken)), "not valid TOML")
