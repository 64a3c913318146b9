"""Expert parallelism on real gloo process groups equals the single-process model.

Every multi-rank case runs in one job of 4 gloo ranks, one after another (`four_ranks`: the process start-up,
most of the cost on two cores, is paid once); each test checks its case's results. EP = 4 is the EP = W case
(whole experts, one holder each), EP = 2 the EP < W case (experts replicated over W/EP ranks); at W = 2 the
same code would only repeat the EP = W case.

Tolerance (fp32). EP changes no arithmetic, only where it runs and in which order sums are taken: an expert's
GEMM now also holds other ranks' rows (the kernel may block its dot products differently), and an expert's
weight gradient sums every rank's tokens in one GEMM instead of rank by rank. Two orders of a length-n sum
differ by at most 2·γ_n·Σ|terms|, γ_n = n·u / (1 − n·u), u = 2⁻²⁴ (Higham 2002, "Accuracy and Stability of
Numerical Algorithms", §3.1, eq. 3.5). Here n ≤ 128 (the longest reduction: the vocabulary in the LM head's
backward; rows per expert, hidden width and expert width are shorter), and a difference entering one layer is
carried through at most L + 1 = 4 more linear maps (3 layers, the LM head), each at most as large again in
these O(1)-conditioned tiny layers. Hence ``tol = 2·(L+1)·γ_128·max|reference|`` ≈ 9·10⁻⁵ × the largest
reference value: far above reordering noise, far below any real fault (a token
sent to the wrong expert or a rank's contribution missing is an O(1) relative change). Measured: at most
6·10⁻⁷ relative, in logits and gradients, at EP = 2 and 4.

After training steps, Newton–Schulz amplifies such differences; the steps are compared at distributed
Muon's established tolerance (2·10⁻⁵ on parameters, tests/optim/test_distributed_muon.py). The correction
biases move by ±γ from integer expert counts, so they must agree exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lagoon.errors import ConfigError
from lagoon.model import save_pretrained
from lagoon.optim import build_optimizer
from lagoon.parallel.expert import check_expert_parallel, expert_major_order
from tests.optim.distributed_helpers import batch, config, spawn
from tests.parallel.expert_workers import (
    ENGINE_STACK, cases_worker, engine_model, forward_backward, is_expert, make_model, rank_batch,
)

LAYERS = 3
STEPS = 4
PARAM_ATOL = 2e-5  # distributed Muon vs one process after several steps (tests/optim/test_distributed_muon.py)


def tolerance(reference: torch.Tensor, n: int = 128, depth: int = LAYERS + 1) -> float:
    """2·depth·γ_n·max|reference| (see the module docstring)."""
    u = 2.0**-24
    gamma = n * u / (1 - n * u)
    return 2 * depth * gamma * float(reference.abs().max())


def _run(world_size: int, cases: list, tmp_path: Path) -> list[list[dict]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    spawn(cases_worker, world_size, cases, str(tmp_path))
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def _check_gradients(ranks: list[dict], world_size: int) -> None:
    reference = make_model()
    expected = [forward_backward(reference, rank_batch(r)) for r in range(world_size)]
    ep = ranks[0]["ep"]  # as the model reports it (`expert_parallel_degree`)
    for rank, found in enumerate(ranks):
        logits, grads = expected[rank]
        for key in ("logits", "logits_loop"):
            torch.testing.assert_close(found[key], logits, rtol=0, atol=tolerance(logits), msg=f"rank {rank} {key}")
        assert torch.equal(found["logits_eval"], found["logits_loop"]), "inference runs the same computation"
        # grouped vs loop under EP: the same rows per expert, so only the GEMM kernels' blocking differs
        torch.testing.assert_close(found["logits"], found["logits_loop"], rtol=0, atol=tolerance(logits))
        position, group = found["position"], found["group"]
        for key in ("grads", "grads_loop"):
            assert set(found[key]) == set(grads), set(found[key]) ^ set(grads)
            for name, grad in found[key].items():
                want = grads[name]
                if is_expert(name):
                    # The holder's gradient sums every token its expert-parallel group sent to these experts.
                    rows = want.shape[0] // ep
                    want = sum(expected[r][1][name] for r in group)[position * rows : (position + 1) * rows]
                torch.testing.assert_close(grad, want, rtol=0, atol=tolerance(want), msg=f"rank {rank} {key} {name}")
        # Expert weights per rank: exactly 1/EP of the full stacks' storage, measured from the tensors' storages.
        assert found["local_bytes"] * ep == found["full_bytes"], (found["local_bytes"], found["full_bytes"])


def _check_checkpoint(ranks: list[dict], directory: Path, world_size: int) -> None:
    """EP = W → EP = W/2 through torch.distributed.checkpoint, and into one process without any process group."""
    import torch.distributed.checkpoint as dcp

    saved = ranks[0]["saved"]
    for rank, found in enumerate(ranks):
        assert found["loaded"].keys() == saved.keys()
        for name, tensor in saved.items():
            assert torch.equal(found["loaded"][name], tensor), (rank, name)
        assert all(rows * (world_size // 2) == saved[name].shape[0] for name, rows in found["local_rows"].items())
    single = make_model(initializer_range=0.05)
    state = {"model": single.state_dict()}
    dcp.load(state, checkpoint_id=str(directory), no_dist=True)
    for name, tensor in single.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def _check_idle_experts(ranks: list[dict], ep: int) -> None:
    """The backward completed on every rank (no collective left unmatched); the experts nobody routed to have
    exactly zero gradients, the others not."""
    experts = 8
    for found in ranks:
        for name, ((start, stop), grad) in found.items():
            routed = stop <= experts // ep
            assert start < stop and (grad.abs().sum() > 0) == routed, (name, start, stop)
            if not routed:
                assert torch.equal(grad, torch.zeros_like(grad)), name


def _train_reference(steps: int) -> dict:
    model = make_model()
    optimizer = build_optimizer(model, config())
    result: dict = {"losses": [], "counts": []}
    for step in range(steps):
        ids = batch(step)
        loss = model(ids, targets=ids).loss
        loss.backward()
        result["losses"].append(float(loss.detach()))
        optimizer.step()
        optimizer.zero_grad()
        result["counts"].append([block.expert_counts.clone() for block in model.moe_blocks()])
        model.update_router_biases()
    result["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    result["state"] = optimizer.state_dict()
    return result


def _check_training(ranks: list[dict], world_size: int, ep: int, reference: dict) -> None:
    for rank, found in enumerate(ranks):
        for step, (loss, want) in enumerate(zip(found["losses"], reference["losses"])):
            assert abs(loss - want) <= 1e-5, (rank, step, loss, want)
        for name, want in reference["params"].items():
            got = found["params"][name]
            if name.endswith("e_score_correction_bias"):
                assert torch.equal(got, want), (rank, name, got, want)  # global counts: the same bias steps
            else:
                torch.testing.assert_close(got, want, rtol=0, atol=PARAM_ATOL, msg=f"rank {rank} {name}")
        for name, entry in reference["state"]["muon"].items():
            torch.testing.assert_close(found["state"]["muon"][name]["momentum"], entry["momentum"], rtol=0,
                                       atol=PARAM_ATOL, msg=f"momentum {name}")
        # Load statistics come from the global counts: the same as one process's, plus the per-rank view.
        for stats, counts in zip(found["stats"], reference["counts"]):
            for layer, counts_E in zip((1, 2), counts):
                assert stats[f"max_load/layer{layer}"] == float(counts_E.max() / counts_E.mean())
                per_rank = counts_E.view(ep, -1).sum(1)
                assert stats[f"ep_max_load/layer{layer}"] == pytest.approx(float(per_rank.max() / per_rank.mean()))
    # One optimizer state per parameter in the whole job, about 1/W of it per rank.
    single = sum(t.numel() for section in ("muon", "adamw") for entry in reference["state"][section].values()
                 for t in entry.values())
    per_rank = [found["state_elements"] for found in ranks]
    assert single <= sum(per_rank) < single + 2 * world_size, (per_rank, single)
    assert max(per_rank) <= 1.5 * single / world_size, (per_rank, single)
    # ddp: expert buckets travel among their replicas only (a no-op group when every expert has one holder);
    # fsdp2: each rank's whole experts are orthogonalized in place.
    assert all(found["expert_buckets"] > 0 or found["local_experts"] == 4 for found in ranks)


WORLD = 4
CASES = {
    # EP = W (2 whole experts per rank) and EP < W (experts replicated over W/EP = 2 ranks).
    "gradients_ep4": ("gradients", dict(ep=4)),
    "gradients_ep2": ("gradients", dict(ep=2)),
    "training_ep4": ("training", dict(ep=4, steps=STEPS, optim=config(distributed="ddp"))),
    "training_ep2": ("training", dict(ep=2, steps=STEPS, optim=config(distributed="ddp"))),
    # FSDP2 over the data-parallel ranks sharing an EP position, on top of EP = 2 (the engine's layout).
    "training_fsdp2_ep2": ("training", dict(ep=2, steps=STEPS, optim=config(distributed="fsdp2"))),
    "checkpoint": ("checkpoint", dict(directory="{work}/dcp")),
    "idle": ("idle", dict(ep=2)),
    "engine": ("engine", dict(source="{work}/hf")),
}


@pytest.fixture(scope="module")
def four_ranks(tmp_path_factory) -> tuple[dict[str, list], Path]:
    """Every case above in one job of 4 gloo ranks (one start-up for all of them): each case's per-rank results."""
    work = tmp_path_factory.mktemp("expert")
    save_pretrained(engine_model(), work / "hf")
    cases = [(kind, {key: value.format(work=work) if isinstance(value, str) else value
                     for key, value in kwargs.items()}) for kind, kwargs in CASES.values()]
    results = _run(WORLD, cases, work / "ranks")
    return {name: [results[r][index] for r in range(WORLD)] for index, name in enumerate(CASES)}, work


@pytest.fixture(scope="module")
def reference() -> dict:
    return _train_reference(STEPS)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("ep", [4, 2])
def test_logits_and_gradients_equal_one_process(ep, four_ranks):
    """EP = W and EP < W, grouped experts and the loop, training and inference."""
    ranks = four_ranks[0][f"gradients_ep{ep}"]
    assert ranks[0]["ep"] == ep
    _check_gradients(ranks, WORLD)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", ["training_ep4", "training_ep2", "training_fsdp2_ep2"])
def test_muon_steps_equal_one_process(case, four_ranks, reference):
    """A few steps of distributed Muon agree in loss, parameters, momentum and correction biases: ``ddp`` with
    the rest replicated, and ``fsdp2`` with FSDP2 over EP = 2."""
    _check_training(four_ranks[0][case], WORLD, CASES[case][1]["ep"], reference)


@pytest.mark.timeout(600)
def test_a_checkpoint_saved_at_ep4_loads_at_ep2_and_in_one_process(four_ranks):
    ranks, work = four_ranks
    _check_checkpoint(ranks["checkpoint"], work / "dcp", WORLD)


@pytest.mark.timeout(600)
def test_fsdp2_over_ep_reduces_the_gradients_of_experts_that_received_no_tokens(four_ranks):
    """FSDP2 over EP = 2 completes a backward in which half the experts receive no tokens."""
    _check_idle_experts(four_ranks[0]["idle"], CASES["idle"][1]["ep"])


@pytest.mark.timeout(600)
def test_the_engine_layout_loads_gathers_and_holds_its_experts(four_ranks):
    """The engine's layout (dp_shard = dp_shard_mod_ep × ep): ranks read only their experts from Hugging Face
    files, the full tensors gather back to rank 0 (publishing, export), and the expert weights a rank holds —
    sharded at rest, gathered for compute — are measured, without EP and at EP = 2.

    With EP = 2 over 4 ranks, FSDP2 splits each EP rank's experts again, so a rank's experts are contiguous but
    not in rank order (rank 1 holds experts 4-5 of 8): what `lagoon.parallel.gather` and distributed Muon must
    read from the DTensor layout instead of assuming."""
    model = engine_model()
    full = model.state_dict()
    full_bytes = full[ENGINE_STACK].numel() * full[ENGINE_STACK].element_size()
    tied = model.config.tie_word_embeddings
    for ep in (1, 2):
        held: list[tuple[int, int]] = []
        for rank, results in enumerate(four_ranks[0]["engine"]):
            found = results[ep]
            for name, (start, stop, local) in found["rows"].items():
                if name == "lm_head.weight" and tied:
                    continue
                assert torch.equal(local, full[name][start:stop]), (ep, rank, name)
            held.append(found["rows"][ENGINE_STACK][:2])
            if rank == 0:   # every tensor back, whole, in its place
                assert found["gathered"].keys() == {n for n in full if not (n == "lm_head.weight" and tied)}
                for name, tensor in found["gathered"].items():
                    assert torch.equal(tensor, full[name]), (ep, name)
            # At rest every layout holds 1/4 of the experts (FSDP2 alone, or EP × FSDP2 over the rest); for
            # compute FSDP2 alone gathers all 8 experts, EP only the E/ep of this EP rank.
            assert found["at_rest"] * WORLD == full_bytes, (ep, found["at_rest"], full_bytes)
            assert found["computed"] * ep == full_bytes, (ep, found["computed"], full_bytes)
        # Whole experts, each on exactly one rank; under EP = 2 not in rank order.
        assert sorted(held) == [(0, 2), (2, 4), (4, 6), (6, 8)], (ep, held)
        if ep == 2:
            assert held == [(0, 2), (4, 6), (2, 4), (6, 8)], held



def test_expert_major_order_regroups_received_rows():
    received_PEl = torch.tensor([[2, 0, 1], [1, 3, 0]])  # rank 0 sent 2, 0, 1 rows; rank 1 sent 1, 3, 0
    # received rows, source-major: [s0e0, s0e0, s0e2, s1e0, s1e1, s1e1, s1e1]
    assert expert_major_order(received_PEl).tolist() == [0, 1, 3, 4, 5, 6, 2]


@pytest.mark.parametrize("ep, world_size, fragment", [
    (3, 6, "does not divide model.num_experts (8)"),
    (4, 6, "does not divide the world size 6"),
    (0, 4, "must be >= 1"),
])
def test_bad_expert_parallel_degree_is_a_one_line_config_error(ep, world_size, fragment):
    model_config = make_model().config
    with pytest.raises(ConfigError) as raised:
        check_expert_parallel(model_config, ep, world_size)
    message = str(raised.value)
    assert message.startswith("parallel.ep: ") and fragment in message and "\n" not in message
    assert raised.value.exit_code == 2
    check_expert_parallel(model_config, 4, 8)  # divides both: fine
