"""A sharded RL trainer publishes by streaming: 2 FSDP ranks gather one full tensor at a time onto rank 0, in the
servers' dtype, straight into the publisher — and a live bf16 server ends up holding exactly the bits a
single-process trainer gives it, through every transfer (files, shared memory, broadcast). The startup check
hashes the same stream, the vLLM probe's reference comes from the sharded model itself, and a publication that
fails on rank 0 halfway leaves no rank waiting in the gather."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lagoon.rl.servers import LocalServers
from tests.optim.distributed_helpers import spawn
from tests.rl.helpers import rl_config, tiny_checkpoint

TRANSFERS = ("files", "shared_memory", "broadcast")
SERVERS = {"rl.servers.dtype": "bfloat16", "rl.servers.count": 1}
SHARDED = {"parallel.dp_replicate": 1, "parallel.dp_shard": -1}


def _publish_each_transfer(trainer) -> list[dict]:
    """Publish the trainer's weights once per transfer as versions 1, 2, 3 (each version's weights moved by the
    same step in every layout, so that no transfer can pass by leaving the previous version in place); what the
    store and the server got."""
    import torch

    from lagoon.parallel.materialize import local_part

    out = []
    for version, transfer in enumerate(TRANSFERS, start=1):
        with torch.no_grad():
            for parameter in trainer.model.parameters():
                local_part(parameter).add_(1e-3 * version)
        if trainer.publisher is not None:
            trainer.publisher.config.transfer, trainer.publisher.transfer = transfer, None
        trainer.version = version
        record = trainer._publish()
        if trainer.is_main:
            (served,) = trainer.publisher.server_weights()
            out.append({"transfer": record["transfer"], "failed": record["failed_servers"], "store": record["digest"],
                        "version": served["policy_version"], "served": served["digest"]})
    return out


def _sharded_trainer(rank: int, world_size: int, init: str, run_dir: str, url: str, out: str) -> None:
    import torch

    from lagoon.errors import LagoonError
    from lagoon.rl.trainer import Trainer
    from lagoon.weights.probe import policy_logprobs, probe_ids

    trainer = Trainer(rl_config(init, **SERVERS, **SHARDED), run_dir, servers=[url], say=lambda _: None)
    assert trainer.engine.sharded and trainer.publish_dtype == torch.bfloat16
    published = _publish_each_transfer(trainer)
    trainer._sync_servers()          # the server holds version 3 already: the digest check must agree

    # Rank 0's consumer fails after two tensors: both ranks finish the gather, then both raise.
    def fails_halfway(pairs):
        next(pairs), next(pairs)
        raise LagoonError("the server went away")

    with pytest.raises(LagoonError, match="the server went away") as error:
        trainer.engine.on_rank0(fails_halfway, trainer.publish_dtype)
    # The vLLM probe's reference log-probabilities, from the sharded model itself (a collective forward).
    probe = policy_logprobs(trainer.model, probe_ids(trainer.model.config.vocab_size))
    Path(out, f"rank{rank}.json").write_text(json.dumps({"published": published, "error": str(error.value),
                                                         "probe": probe}))
    if trainer.publisher is not None:
        trainer.publisher.close()          # its shared-memory segments
    trainer.metrics.close()


@pytest.mark.timeout(400)
def test_two_fsdp_ranks_publish_the_bits_of_one_process(tmp_path):
    from lagoon.rl.trainer import Trainer
    from lagoon.train.metrics import read_jsonl
    from lagoon.weights.probe import policy_logprobs, probe_ids

    init = tiny_checkpoint(tmp_path / "init")
    servers = LocalServers(rl_config(init, **SERVERS), tmp_path / "serving")
    (url,) = servers.start()
    try:
        single = Trainer(rl_config(init, **SERVERS), tmp_path / "single", servers=[url], say=lambda _: None)
        assert not single.engine.sharded
        reference = _publish_each_transfer(single)
        single.publisher.close()
        probe = policy_logprobs(single.model, probe_ids(single.model.config.vocab_size))
        spawn(_sharded_trainer, 2, str(init), str(tmp_path / "sharded"), url, str(tmp_path))
    finally:
        servers.stop()
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    sharded = ranks[0]["published"]
    assert [r["transfer"] for r in sharded] == list(TRANSFERS) and ranks[1]["published"] == []
    for ours, theirs in zip(sharded, reference):
        assert ours["failed"] == [] and ours["version"] == theirs["version"]
        assert ours["served"] == theirs["served"] and ours["store"] == theirs["store"], ours["transfer"]
    # bf16 weights on the server, the router's correction bias in fp32 in the store: two different digests.
    assert sharded[0]["served"] != sharded[0]["store"]
    assert "publish" not in [e["event"] for e in read_jsonl(tmp_path / "sharded" / "events.jsonl")]
    for rank in ranks:
        assert rank["probe"] == pytest.approx(probe, abs=1e-6, rel=0)
    assert ranks[0]["error"] == "the server went away"
    assert ranks[1]["error"] == "trainer rank 0 failed while the weights streamed to it: the server went away"
