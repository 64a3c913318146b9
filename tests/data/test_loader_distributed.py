"""The loader under torch.distributed (gloo, 2 processes): the gathered rank batches are the single-process stream."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(rank: int, world_size: int, init_file: str, shards_dir: str, result_file: str) -> None:
    from lagoon.data import MixtureLoader, ShardSet

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        shards = ShardSet.open(shards_dir)
        loader = MixtureLoader(shards, shards.natural_mixture(), seq_len=32, global_batch_size=8, seed=11,
                               rank=dist.get_rank(), world_size=dist.get_world_size())
        steps = []
        for _ in range(3):
            batch = next(loader)
            gathered = [torch.empty_like(batch.input_ids) for _ in range(world_size)]
            dist.all_gather(gathered, batch.input_ids)
            steps.append(torch.cat(gathered))
        if rank == 0:
            torch.save(torch.stack(steps), result_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_gloo_ranks_gather_to_the_single_process_stream(quick_shards_dir, tmp_path):
    from lagoon.data import MixtureLoader, ShardSet

    result = tmp_path / "gathered.pt"
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(quick_shards_dir), str(result)), nprocs=2, join=True)
    shards = ShardSet.open(quick_shards_dir)
    single = MixtureLoader(shards, shards.natural_mixture(), seq_len=32, global_batch_size=8, seed=11)
    expected = torch.stack([next(single).input_ids for _ in range(3)])
    assert torch.equal(torch.load(result), expected)
