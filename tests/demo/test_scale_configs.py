"""Every shipped config loads and validates, and the scale-out recipes describe the models they say."""

from __future__ import annotations

from pathlib import Path

import pytest

from lagoon.config import load_config
from lagoon.model.count import count_parameters
from lagoon.rl.servers import serve_command
from tests.conftest import ROOT

CONFIGS = sorted((ROOT / "configs").rglob("*.toml"))


def test_the_configs_directory_holds_the_demo_and_the_scale_recipes():
    names = {str(path.relative_to(ROOT / "configs")) for path in CONFIGS}
    assert {"demo.toml", "demo_quick.toml", "scale/gpu_node.toml", "scale/cluster.toml",
            "scale/laguna_xs2_rl.toml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_loads_and_validates(path: Path):
    load_config(str(path), [])


@pytest.mark.parametrize("name, total, active", [
    ("gpu_node", 859_172_320, 198_569_440),
    ("cluster", 5_264_614_848, 1_212_917_184),
    ("laguna_xs2_rl", 33_440_000_000, 3_020_000_000),
])
def test_scale_recipes_have_the_model_sizes_their_docs_state(name, total, active):
    config = load_config(str(ROOT / "configs" / "scale" / f"{name}.toml"), [])
    counts = count_parameters(config.model)
    assert counts.total == pytest.approx(total, rel=5e-3) and counts.active == pytest.approx(active, rel=5e-3)


def test_the_gpu_recipes_put_servers_and_weights_on_the_gpus():
    config = load_config(str(ROOT / "configs" / "scale" / "gpu_node.toml"), [])
    commands = [serve_command(config, Path("ckpt"), 8000 + i, 0, i) for i in range(config.rl.servers.count)]
    devices = [command[command.index("--device") + 1] for command in commands]
    assert devices == ["cuda:4", "cuda:5", "cuda:6", "cuda:7"]
    assert all(command[command.index("--dtype") + 1] == "bfloat16" for command in commands)
    assert config.rl.weights.transfer == "broadcast" and config.rl.weights.backend == "nccl"
    assert config.demo.pretrain_ranks == 8 and config.train.device == "cuda"

    cluster = load_config(str(ROOT / "configs" / "scale" / "cluster.toml"), [])
    assert cluster.rl.table.catalog == "rest" and cluster.rl.table.uri.startswith("http")
    assert cluster.rl.actor.backend == "ray" and cluster.automix.backend == "ray"
    assert cluster.rl.servers.host == "0.0.0.0" and len(cluster.rl.servers.urls) == 4


def test_local_servers_default_to_the_cpu_in_float32():
    config = load_config(str(ROOT / "configs" / "demo.toml"), [])
    command = serve_command(config, Path("ckpt"), 8000, 3)
    assert command[command.index("--device") + 1] == "cpu" and command[command.index("--dtype") + 1] == "float32"
    assert command[command.index("--policy-version") + 1] == "3"
