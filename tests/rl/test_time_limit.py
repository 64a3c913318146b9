"""The RL time limit: a trainer told to stop is never restarted, even when the signal reaches it before it
has installed its own handler (it then exits by the signal, not with 0)."""

from __future__ import annotations

from pathlib import Path

from lagoon.config import load_config
from lagoon.configio import dumps_toml, to_dict
from lagoon.rl.orchestrate import Supervisor

CONFIG = Path(__file__).parents[2] / "configs" / "rl_demo.toml"


def test_a_stopped_trainer_is_not_restarted(tmp_path):
    config = load_config(CONFIG)
    config_path = tmp_path / "config.toml"
    config_path.write_text(dumps_toml({k: v for k, v in to_dict(config).items() if k in ("model", "agent", "rl")}))
    supervisor = Supervisor(config, tmp_path, config_path, [], say=print)
    try:
        supervisor.start_trainer()
        supervisor.stopping = True
        supervisor.trainer.terminate()          # at once: long before the trainer's own handler exists
        assert supervisor.trainer.wait(timeout=120) != 0
        assert supervisor.check() is True
        assert supervisor.trainer_restarts == 0
    finally:
        supervisor.stop()
