"""Expert parallelism on real gloo process groups equals the single-process model.

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
from lagoon.optim import build_optimizer
from lagoon.parallel.expert import check_expert_parallel, expert_major_order
from tests.optim.distributed_helpers import batch, config, spawn
from tests.parallel.expert_workers import cases_worker, forward_backward, is_expert, make_model, rank_batch

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


@pytest.mark.timeout(600)
@pytest.mark.parametrize("world_size, eps", [(2, [2]), (4, [4, 2])])
def test_expert_parallel_equals_single_process(world_size, eps, tmp_path):
    """Logits and gradients at EP = W (and EP < W: experts replicated over W/EP ranks) equal one process; a few
    steps of distributed Muon agree in loss, parameters, momentum and correction biases — also, at W = 4, in
    ``fsdp2`` mode with FSDP2 over EP = 2; at W = 4 a model saved with torch.distributed.checkpoint at EP = 4
    loads at EP = 2 and into a single process, and FSDP2 over EP = 2 completes a backward in which half the
    experts receive no tokens."""
    cases = [("gradients", dict(ep=ep)) for ep in eps]
    cases += [("training", dict(ep=ep, steps=STEPS, optim=config(distributed="ddp"))) for ep in eps]
    if world_size == 4:
        # FSDP2 over the data-parallel ranks sharing an EP position, on top of EP = 2 (the engine's layout).
        cases.append(("training", dict(ep=2, steps=STEPS, optim=config(distributed="fsdp2"))))
        cases.append(("checkpoint", dict(directory=str(tmp_path / "dcp"))))
        cases.append(("idle", dict(ep=2)))
    results = _run(world_size, cases, tmp_path / "ranks")
    reference = _train_reference(STEPS)
    for index, (kind, kwargs) in enumerate(cases):
        ranks = [results[r][index] for r in range(world_size)]
        if kind == "gradients":
            assert ranks[0]["ep"] == kwargs["ep"]
            _check_gradients(ranks, world_size)
        elif kind == "checkpoint":
            _check_checkpoint(ranks, Path(kwargs["directory"]), world_size)
        elif kind == "idle":
            _check_idle_experts(ranks, kwargs["ep"])
        else:
            _check_training(ranks, world_size, kwargs["ep"], reference)


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
