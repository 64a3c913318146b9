"""Claims (issue 18): one MoE layer's training step under expert parallelism (EP = W) against replicated experts at
the same W; grouped experts against the per-expert loop; and the all-to-all volume and rate that calibrate the
EP cost model (`benchmarks/distributed_muon_cost_model.py`).

W gloo ranks on CPU (one thread each). Every rank builds one sparse layer of the `small` preset (D = 512,
16 experts of width 256, top-2) from the same seed, holds its own tokens ([2, T] activations, a different
seed per rank) and runs, side by side and round-robin so machine noise hits them alike:

- ``replicated``: every rank holds all experts (today's data parallelism); the step is forward + backward
  on its own tokens, then the gradient all-reduce of every parameter (what DDP does);
- ``ep``: experts sharded over the W ranks (`lagoon.parallel.expert`): forward + backward with the two
  all-to-alls each way, then the all-reduce of the non-expert gradients only (an expert's gradient is
  complete on its holder);
- ``replicated_loop`` / ``ep_loop``: the same with the per-expert loop instead of ``torch._grouped_mm``.

Times are the slowest rank's median over the rounds (a barrier before each step). Then the all-to-alls of
one EP step are replayed alone with the very split sizes the layer used, which gives the bytes that left
each rank and the rate gloo moved them at — the calibration the cost model states.

README's table rows, from the per-round ratios (each round's slowest rank per scheme; median and min–max over
the rounds): `expert_parallel` (EP ÷ replicated, whole layer step) and `expert_parallel.grouped` (grouped ÷
loop, forward + backward); both stated.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

import lagoon.parallel.expert as expert_parallel
from benchmarks.common import ratios, record, spawn_gloo, spread, table_row
from lagoon.model import preset_config
from lagoon.model.moe import MoE
from lagoon.parallel.expert import apply_expert_parallel

SCHEMES = ("replicated", "ep", "replicated_loop", "ep_loop")


class _Layer(torch.nn.Module):
    """A sparse layer with the decoder's `config`, so `apply_expert_parallel` can check it."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.mlp = MoE(config)
        with torch.no_grad():
            for param in self.mlp.parameters():
                param.normal_(0, 0.02)
            self.mlp.gate.e_score_correction_bias.zero_()


def build(scheme: str, world_size: int):
    torch.manual_seed(0)
    layer = _Layer(preset_config("small")).train()
    if scheme.startswith("ep"):
        apply_expert_parallel(layer, dist.group.WORLD, "cpu")
    if scheme.endswith("loop"):
        layer.mlp.experts.implementation = "loop"
    synced = [p for n, p in layer.named_parameters() if p.requires_grad
              and not (scheme.startswith("ep") and n.startswith("mlp.experts."))]
    expert_bytes = sum(p.to_local().nbytes if hasattr(p, "to_local") else p.nbytes
                       for n, p in layer.named_parameters() if n.startswith("mlp.experts."))
    return layer, synced, expert_bytes


def step(layer, synced, x_BTD, world_size: int) -> tuple[float, float]:
    """(forward + backward seconds, gradient all-reduce seconds)."""
    layer.zero_grad(set_to_none=True)
    start = time.perf_counter()
    layer.mlp(x_BTD).square().mean().backward()
    middle = time.perf_counter()
    flat = torch.cat([p.grad.reshape(-1) for p in synced])
    dist.all_reduce(flat)
    flat /= world_size
    return middle - start, time.perf_counter() - middle


def replay_all_to_alls(layer, x_BTD, repeats: int) -> tuple[int, float]:
    """(bytes this rank sends to other ranks per EP step, seconds per step of those all-to-alls alone)."""
    calls = []
    original = expert_parallel.all_to_all

    def recording(x, output_splits, input_splits, group):
        calls.append((list(output_splits), list(input_splits), x.shape[1], x.element_size()))
        return original(x, output_splits, input_splits, group)

    expert_parallel.all_to_all = recording
    try:
        layer.zero_grad(set_to_none=True)
        layer.mlp(x_BTD).square().mean().backward()
    finally:
        expert_parallel.all_to_all = original
    rank = dist.get_rank()
    # Each recorded call also runs reversed in the backward pass.
    transfers = [(out, inp, width, size) for out, inp, width, size in calls] + \
                [(inp, out, width, size) for out, inp, width, size in calls]
    sent = sum(sum(s for r, s in enumerate(inp) if r != rank) * width * size for _, inp, width, size in transfers)
    buffers = [(torch.empty(sum(out), width), torch.randn(sum(inp), width), out, inp) for out, inp, width, _ in transfers]
    dist.barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        for received, send, out, inp in buffers:
            dist.all_to_all_single(received, send, out, inp)
    return sent, (time.perf_counter() - start) / repeats


def worker(rank: int, world_size: int, tokens: int, rounds: int, out: str) -> None:
    layers = {name: build(name, world_size) for name in SCHEMES}
    generator = torch.Generator().manual_seed(100 + rank)
    x_BTD = torch.randn(2, tokens // 2, layers["ep"][0].config.hidden_size, generator=generator, requires_grad=True)
    samples = {name: {"compute": [], "sync": []} for name in SCHEMES}
    for index in range(rounds + 1):  # round 0 warms up
        for name, (layer, synced, _) in layers.items():
            dist.barrier()
            compute, sync = step(layer, synced, x_BTD, world_size)
            if index:
                samples[name]["compute"].append(compute)
                samples[name]["sync"].append(sync)
    result = {name: {key: statistics.median(values) for key, values in found.items()} for name, found in samples.items()}
    result["samples"] = samples
    for name, (_, _, expert_bytes) in layers.items():
        result[name]["expert_bytes"] = expert_bytes
        result[name]["step"] = result[name]["compute"] + result[name]["sync"]
    # Rows each EP rank's experts received (every rank's router, summed): the busiest rank sets the pace.
    counts_E = layers["ep"][0].mlp.expert_counts.clone()
    dist.all_reduce(counts_E)
    per_rank = counts_E.view(world_size, -1).sum(1)
    result["ep_imbalance"] = float(per_rank.max() / per_rank.mean())
    result["sent_bytes"], result["a2a_seconds"] = replay_all_to_alls(layers["ep"][0], x_BTD, rounds)
    torch.save(result, Path(out) / f"rank{rank}.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--world-size", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=512, help="tokens per rank per step")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    W = args.world_size
    with tempfile.TemporaryDirectory() as directory:
        spawn_gloo(worker, W, args.tokens, args.rounds, directory)
        ranks = [torch.load(Path(directory) / f"rank{r}.pt") for r in range(W)]
    slowest = {name: {key: max(r[name][key] for r in ranks) for key in ("compute", "sync", "step")} for name in SCHEMES}
    config = preset_config("small")
    D, k, E = config.hidden_size, config.num_experts_per_tok, config.num_experts
    lines = [f"One sparse layer of the `small` preset (D = {D}, {E} experts of width {config.moe_intermediate_size}, "
             f"top-{k}), W = {W} gloo ranks, 1 thread each, {args.tokens} tokens per rank; slowest rank's median "
             f"over {args.rounds} round-robin rounds.", "",
             "| scheme | forward + backward s | gradient all-reduce s | step s | expert weights per rank |",
             "|---|---|---|---|---|"]
    for name in SCHEMES:
        s = slowest[name]
        lines.append(f"| {name} | {s['compute']:.4f} | {s['sync']:.4f} | {s['step']:.4f} | "
                     f"{ranks[0][name]['expert_bytes'] / 2**20:.2f} MiB |")
    ratio = slowest["ep"]["step"] / slowest["replicated"]["step"]
    lines += ["", f"- EP = {W} / replicated experts, whole layer step: **{ratio:.2f}×** "
              f"(forward + backward alone: {slowest['ep']['compute'] / slowest['replicated']['compute']:.2f}×; "
              f"expert weights per rank: {ranks[0]['ep']['expert_bytes'] / ranks[0]['replicated']['expert_bytes']:.3f}×); "
              f"rows per EP rank, busiest ÷ mean: {ranks[0]['ep_imbalance']:.2f} (this seed's router at initialization)",
              f"- grouped / loop, forward + backward: replicated {slowest['replicated']['compute'] / slowest['replicated_loop']['compute']:.2f}×, "
              f"EP {slowest['ep']['compute'] / slowest['ep_loop']['compute']:.2f}×"]

    def per_round(name: str, key: str) -> list[float]:
        """The slowest rank's `key` seconds ("compute", or "step" = compute + sync) in each round."""
        return [max(r["samples"][name]["compute"][i] + (r["samples"][name]["sync"][i] if key == "step" else 0.0)
                    for r in ranks) for i in range(args.rounds)]

    def figure(numerator: str, denominator: str, key: str) -> str:
        return spread(ratios(per_round(numerator, key), per_round(denominator, key)), unit="×")

    sent = statistics.mean(r["sent_bytes"] for r in ranks)
    a2a = max(r["a2a_seconds"] for r in ranks)
    uniform = 4 * args.tokens * k * D * 4 * (W - 1) / W  # the cost model's volume, fp32 rows, uniform routing
    lines += [f"- all-to-all calibration: {sent / 1e6:.2f} MB left each rank per step (mean; the cost model's "
              f"4·N·k·D·bytes·(P−1)/P = {uniform / 1e6:.2f} MB under uniform routing); the same all-to-alls alone took "
              f"{a2a * 1e3:.1f} ms → {sent / a2a / 1e9:.3f} GB/s per rank on this host "
              f"({a2a / slowest['ep']['compute']:.0%} of the EP forward + backward)"]
    rounds = f"{args.rounds} rounds, " if args.rounds > 1 else ""
    lines += ["", table_row("expert_parallel", "stated", f"{figure('ep', 'replicated', 'step')} (EP = {W}, {rounds}"
                            f"{args.tokens} tokens per rank, gloo, {os.cpu_count()} cores)", ""),
              table_row("expert_parallel.grouped", "stated",
                        f"replicated {figure('replicated', 'replicated_loop', 'compute')}, "
                        f"EP {figure('ep', 'ep_loop', 'compute')} (forward + backward)", "")]
    print("\n".join(lines))
    if not args.no_record:
        record("Expert parallelism: MoE layer step under EP vs replicated experts; grouped vs loop; all-to-all "
               "calibration (issue 18)", lines)


if __name__ == "__main__":
    main()
