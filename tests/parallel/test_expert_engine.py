"""The engine's expert-parallel layout on 4 gloo ranks (dp_shard = dp_shard_mod_ep × ep): ranks read only their
experts from Hugging Face files, the full tensors gather back to rank 0 (publishing, export), and the expert
weights a rank holds — sharded at rest, gathered for compute — are measured, without EP and at EP = 2.

With EP = 2 over 4 ranks, FSDP2 splits each EP rank's experts again, so a rank's experts are contiguous but
not in rank order (rank 1 holds experts 4-5 of 8): what `lagoon.parallel.gather` and distributed Muon must
read from the DTensor layout instead of assuming.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lagoon.model import LagunaForCausalLM, preset_config, save_pretrained
from tests.optim.distributed_helpers import spawn

EXPERTS = 8
STACK = "model.layers.1.mlp.experts.gate_up_proj"


def _model() -> LagunaForCausalLM:
    torch.manual_seed(0)
    config = preset_config("tiny", vocab_size=97, hidden_size=32, head_dim=8, num_key_value_heads=2,
                           num_attention_heads=4, intermediate_size=40, moe_intermediate_size=16,
                           shared_expert_intermediate_size=16, num_hidden_layers=3, num_dense_layers=1,
                           num_experts=EXPERTS, num_experts_per_tok=2)
    model = LagunaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)   # no constant tensors: every slice is distinguishable
    return model


def _worker(rank: int, world_size: int, source: str, out: str) -> None:
    from lagoon.model.hf import read_config
    from lagoon.parallel.config import ParallelConfig
    from lagoon.parallel.gather import full_tensors
    from lagoon.parallel.load import load_weights
    from lagoon.parallel.materialize import local_part, local_region, materialize
    from lagoon.parallel.mesh import ParallelDims, build_mesh
    from lagoon.parallel.parallelize import parallelize

    results = {}
    for ep in (1, 2):
        config = ParallelConfig(dp_replicate=1, dp_shard=-1, ep=ep)
        mesh = build_mesh(ParallelDims.resolve(config, world_size), "cpu")
        with torch.device("meta"):
            model = LagunaForCausalLM(read_config(Path(source)))
        parallelize(model, mesh, config)
        materialize(model, "cpu")
        load_weights(model, source, distributed=True)
        rows = {name: (local_region(t)[0].start, local_region(t)[0].stop, local_part(t).clone())
                for name, t in model.state_dict().items()}
        gathered = {name: tensor.clone() for name, tensor in full_tensors(model, None, mesh) if tensor is not None}
        # The expert stack as the layer computes with it: FSDP2 has gathered it (over dp_shard_mod_ep) by the
        # time the experts' own forward pre-hooks run; under EP that is this EP rank's E/ep experts.
        computed = []
        experts = model.get_submodule(STACK.rsplit(".", 1)[0])
        experts.register_forward_pre_hook(lambda module, args: computed.append(
            local_part(module.gate_up_proj).untyped_storage().nbytes()))
        ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(rank))
        model(ids, targets=ids).loss.backward()
        results[ep] = {"rows": rows, "gathered": gathered, "at_rest": local_part(experts.gate_up_proj).untyped_storage().nbytes(),
                       "computed": computed[0]}
    torch.save(results, f"{out}/rank{rank}.pt")


@pytest.mark.timeout(300)
def test_expert_parallel_ranks_load_gather_and_hold_their_experts(tmp_path):
    model = _model()
    save_pretrained(model, tmp_path / "hf")
    spawn(_worker, 4, str(tmp_path / "hf"), str(tmp_path))
    full = model.state_dict()
    full_bytes = full[STACK].numel() * full[STACK].element_size()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(4)]
    for ep in (1, 2):
        held: list[tuple[int, int]] = []
        for rank, results in enumerate(ranks):
            found = results[ep]
            for name, (start, stop, local) in found["rows"].items():
                if name == "lm_head.weight" and model.config.tie_word_embeddings:
                    continue
                assert torch.equal(local, full[name][start:stop]), (ep, rank, name)
            held.append(found["rows"][STACK][:2])
            if rank == 0:   # every tensor back, whole, in its place
                assert found["gathered"].keys() == {n for n in full if not (n == "lm_head.weight"
                                                                           and model.config.tie_word_embeddings)}
                for name, tensor in found["gathered"].items():
                    assert torch.equal(tensor, full[name]), (ep, name)
            # At rest every layout holds 1/4 of the experts (FSDP2 alone, or EP × FSDP2 over the rest); for
            # compute FSDP2 alone gathers all 8 experts, EP only the E/ep of this EP rank.
            assert found["at_rest"] * 4 == full_bytes, (ep, found["at_rest"], full_bytes)
            assert found["computed"] * ep == full_bytes, (ep, found["computed"], full_bytes)
        # Whole experts, each on exactly one rank; under EP = 2 not in rank order.
        assert sorted(held) == [(0, 2), (2, 4), (4, 6), (6, 8)], (ep, held)
        if ep == 2:
            assert held == [(0, 2), (4, 6), (2, 4), (6, 8)], held
