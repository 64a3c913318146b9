"""Held-out bits per byte evaluated with the sharded model itself (no unsharded copy on any rank) equal one
process's figure: FSDP2 on 2 ranks and HSDP 2×2 on 4 (gloo).

The engine initialises the same weights in every layout (`lagoon.parallel.materialize`), and each batch's
loss is computed by the same float32 arithmetic whether its block parameters were all-gathered or not, so
the ranks' partial sums differ from one process's only in the order of the float64 additions: ≤ 1e-12
relative. 7 batches over 2 and 4 ranks leave some ranks a batch short, so the masked padding passes run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.optim.distributed_helpers import spawn
from tests.train.conftest import SMALL_MODEL

# 19 rows of 32 positions → 7 batches: 4/3 at W=2, 2/2/2/1 at W=4.
EVAL = {"groups": ["code", "math"], "max_tokens": 600, "seq_len": 32, "batch_size": 3}


def _model_config(shard_dir: Path):
    from lagoon.data.shards import ShardSet
    from lagoon.model import preset_config

    overrides = {key: value for key, value in SMALL_MODEL.items() if key != "preset"}
    return preset_config("tiny", **overrides, vocab_size=len(ShardSet.open(shard_dir).token_bytes))


def _evaluate(shard_dir: Path, parallel: dict) -> dict[str, float]:
    """Build the engine in `parallel`'s layout (this process's world), evaluate every group."""
    from lagoon.data.shards import ShardSet
    from lagoon.optim import OptimConfig
    from lagoon.parallel.config import ParallelConfig
    from lagoon.parallel.engine import Engine
    from lagoon.train.distributed import setup
    from lagoon.train.evaluate import evaluate_bpb

    dist_info = setup("cpu")
    engine = Engine.build(_model_config(shard_dir), ParallelConfig(**parallel), OptimConfig(), dist_info, seed=3)
    assert engine.sharded == bool(parallel)
    return evaluate_bpb(engine.model, ShardSet.open(shard_dir), **EVAL, group=dist_info.group)


def _worker(rank: int, world_size: int, shard_dir: str, parallel: dict, out: str) -> None:
    results = _evaluate(Path(shard_dir), parallel)
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world_size,parallel", [(2, {"dp_replicate": 1, "dp_shard": -1}),
                                                 (4, {"dp_replicate": 2, "dp_shard": 2})], ids=["fsdp2", "hsdp2x2"])
def test_sharded_evaluation_equals_one_process(shard_dir, world_size, parallel, tmp_path):
    torch.set_num_threads(1)
    single = _evaluate(shard_dir, {})
    spawn(_worker, world_size, str(shard_dir), parallel, str(tmp_path))
    for rank in range(world_size):
        sharded = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert sharded.keys() == single.keys() == {"code", "math"}
        for group, value in single.items():
            assert sharded[group] == pytest.approx(value, rel=1e-12, abs=0), (rank, group)
