"""Weight publication: every transfer path leaves the server holding exactly the trainer's weights."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from lagoon.weights.tensors import weights_digest
from lagoon.model import from_pretrained
from lagoon.rl.servers import LocalServers
from lagoon.weights.publish import WeightPublisher, read_latest, store_root
from tests.rl.helpers import rl_config, tiny_checkpoint


@pytest.mark.timeout(240)
def test_servers_receive_exactly_the_trainers_weights(tmp_path):
    init = tiny_checkpoint(tmp_path / "init")
    config = rl_config(init)
    servers = LocalServers(config, tmp_path / "run")
    urls = servers.start()
    try:
        model = from_pretrained(init, dtype=torch.float32)
        for version, transfer in enumerate(("files", "shm", "broadcast"), start=1):
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.add_(0.01 * torch.randn_like(parameter))
            config.rl.weights.transfer = transfer
            publisher = WeightPublisher(config.rl.weights, tmp_path / "run", urls)
            record = publisher.publish(model, version)
            assert record["failed_servers"] == [] and record["sync_s"] > 0 and record["gb_per_s"] > 0
            (served,) = publisher.server_weights()
            assert served["policy_version"] == version
            assert served["digest"] == weights_digest(model) == record["digest"], transfer
            latest = read_latest(store_root(config.rl.weights, tmp_path / "run"))
            assert latest["version"] == version and latest["digest"] == record["digest"]
            # Generation reports the new version (every token sampled after the update).
            reply = httpx.post(f"{urls[0]}/v1/completions", json={"prompt": [2, 5, 6], "max_tokens": 2,
                                                                  "return_token_ids": True}, timeout=60).json()
            assert reply["policy_version"] == version
            if transfer == "shm":
                publisher.close()
        updates = [json.loads(line) for line in (tmp_path / "run" / "weights" / "updates.jsonl").read_text().splitlines()]
        assert [u["transfer"] for u in updates] == ["files", "shm", "broadcast"]
    finally:
        servers.stop()
