"""Claim (issue 5): a cost model of distributed Muon on Laguna M.1 / 6,144 H100s — is < 1 % of step time reachable?

1. Measures Newton–Schulz time per matrix on this machine for a range of shapes (M.1's expert shape
   included) and checks the cost law time ∝ FLOPs = steps·(4P²Q + 2P³) (P ≤ Q) that owners are balanced by.
2. Enumerates every Muon matrix of the `laguna-m1` preset (meta device, no memory), assigns owners over
   6,144 ranks with lagoon's longest-processing-time rule and reports the busiest rank's FLOPs.
3. Converts FLOPs and bytes to time with stated H100 figures, adds the exposed share of communication,
   and finds the global batch (and tokens per expert) at which the optimizer step is < 1 % of the step.
4. Expert parallelism (issue 18), for Laguna XS.2 and M.1: the all-to-all volume per token and per step,
   its time against the step's compute on NVLink and on InfiniBand, and distributed Muon's owners when
   experts stay whole on their EP holders. The volume law is calibrated by the CPU run of
   `benchmarks/expert_parallel.py` (the bytes it counted against the law's, and gloo's rate there).

Assumptions are parameters (printed with the result); the arithmetic is in docs/distributed_muon.md. README's
table rows: `distributed_muon_cost_model` (the global batch at which M.1's optimizer step is < 1 %) and
`distributed_muon_cost_model.ep` (all-to-all ÷ compute per token, XS.2 and M.1); both stated.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import torch

from benchmarks.common import record, table_row
from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.optim import group_parameters
from lagoon.optim.data_parallel import DataParallel
from lagoon.optim.expert_owners import ExpertReplicas, expert_owners
from lagoon.optim.newton_schulz import newton_schulz, newton_schulz_flops
from lagoon.optim.ownership import assign_owners, blocks_of, imbalance, load_per_rank


CPU_CALIBRATION = {"counted_mb": 6.26, "law_mb": 6.29, "gbs": 0.295}
"""What `python -m benchmarks.expert_parallel` measured on the 2-core CPU host, 2026-12-03, load 9–13 (RESULTS.md):
MB that left each rank per step, the volume law's MB for the same tokens, and gloo's rate in GB/s per rank."""


def measure(shapes: list[tuple[int, int]], repeats: int) -> list[tuple[tuple[int, int], float, float]]:
    """(shape, seconds per matrix, achieved FLOP/s) of fp32 Newton–Schulz, 5 steps, on this CPU."""
    out = []
    for rows, cols in shapes:
        G = torch.randn(1, rows, cols)
        newton_schulz(G, 5, "quintic", "float32")
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            newton_schulz(G, 5, "quintic", "float32")
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        out.append(((rows, cols), seconds, newton_schulz_flops(rows, cols, 5) / seconds))
    return out


def flops_per_token(config, seq_len: int) -> tuple[float, float]:
    """(active non-embedding parameters, training FLOPs per token: 6·N_active + causal attention 6·L·T·H·Dh/2)."""
    with torch.device("meta"):
        model = LagunaForCausalLM(config)
    experts = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    total = sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()
    active = total - experts * (1 - config.num_experts_per_tok / config.num_experts)
    attention = 6 * config.num_hidden_layers * seq_len * config.num_attention_heads * config.head_dim / 2
    return active, 6 * active + attention


def expert_parallel_lines(args, m1_tokens: float, free_ns_seconds: float) -> tuple[list[str], str]:
    """Section 4: the EP all-to-all volume and time for XS.2 and M.1, and Muon's owners on the EP layout; and
    README's table cell: all-to-all ÷ compute per token for both models, on NVLink and on InfiniBand."""
    P, b = args.ep, args.dispatch_bytes
    rate = args.h100_tflops * 1e12 * args.mfu
    nvlink, infiniband = args.nvlink_gbps / 8 * 1e9, args.link_gbps / 8 * 1e9
    lines = [f"**4. Expert parallelism** (EP = {P} ranks; rows dispatched in {8 * b}-bit; uniform routing; NVLink "
             f"{args.nvlink_gbps:.0f} Gb/s and InfiniBand {args.link_gbps:.0f} Gb/s per GPU and direction, at peak; "
             f"compute at {args.mfu:.0%} MFU):", "",
             "Per token and MoE layer the forward sends its k rows of D to their experts and back (dispatch, combine) and "
             f"the backward does both again, transposed: 4·k·D·{b} B, of which (P−1)/P = {(P - 1) / P:.3f} leaves the rank.", "",
             "| model | MoE layers | k | D | bytes off-rank per token per step | FLOPs per token | compute per token "
             "| all-to-all per token, NVLink | …, InfiniBand | all-to-all ÷ compute, NVLink | …, InfiniBand |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    volumes, shares = {}, {}
    for name in ("laguna-xs2", "laguna-m1"):
        config = preset_config(name)
        layers = sum(kind == "sparse" for kind in config.mlp_layer_types)
        k, D = config.num_experts_per_tok, config.hidden_size
        volume = 4 * layers * k * D * b * (P - 1) / P
        _, flops = flops_per_token(config, args.seq_len)
        compute = flops / rate
        volumes[name] = volume
        shares[name] = (volume / nvlink / compute, volume / infiniband / compute)
        lines.append(f"| {name} | {layers} | {k} | {D} | {volume / 1e6:.2f} MB | {flops:.3e} | {compute * 1e6:.1f} µs | "
                     f"{volume / nvlink * 1e6:.1f} µs | {volume / infiniband * 1e6:.1f} µs | {volume / nvlink / compute:.2f} | "
                     f"{volume / infiniband / compute:.2f} |")
    per_rank = m1_tokens / args.ranks
    step_volume = per_rank * volumes["laguna-m1"]
    lines += ["", f"- The ratio does not depend on the batch: each token brings its own compute and its own traffic. Within "
              f"an NVLink domain (EP ≤ 8 on an HGX node) the all-to-alls are a fraction of the step and can be overlapped "
              f"with the shared expert and attention; across InfiniBand they exceed the compute, so EP stays inside the node.",
              f"- M.1 at the < 1 % batch of section 3 ({per_rank:,.0f} tokens per rank per step): {step_volume / 1e9:.1f} GB "
              f"leave each rank per step → {step_volume / nvlink:.2f} s on NVLink, {step_volume / infiniband:.2f} s on InfiniBand.",
              f"- Calibration on this CPU (`benchmarks/expert_parallel.py`, RESULTS.md): the layer's all-to-alls moved "
              f"{args.cpu_counted_mb:.2f} MB per rank per step against the law's {args.cpu_law_mb:.2f} MB "
              f"({args.cpu_counted_mb / args.cpu_law_mb:.2f}×: the law holds up to the routing's imbalance), at "
              f"{args.cpu_a2a_gbs:.2f} GB/s per rank through gloo (CPU threads on 2 shared cores — a check of the volume, "
              "not of a GPU rate)."]
    # Muon's owners on the EP layout: experts whole on their EP position, owned among its W/P replicas.
    with torch.device("meta"):
        model = LagunaForCausalLM(preset_config("laguna-m1"))
    matrices = group_parameters(model).muon
    experts = [p for p, m in enumerate(matrices) if m.param.dim() == 3]
    R = args.ranks // P
    members = [[replica * P + position for replica in range(R)] for position in range(P)]
    fixed, _ = expert_owners(matrices, experts, ExpertReplicas(0, P, members, DataParallel(None, 0, R)))
    load = [5 * cost for cost in load_per_rank(assign_owners(blocks_of(matrices), args.ranks, fixed), args.ranks)]
    ns_seconds = max(load) / (args.h100_tflops * 1e12 * args.ns_efficiency)
    lines.append(f"- Distributed Muon on M.1's EP layout (EP = {P}, experts owned among their {R} replicas, the other "
                 f"matrices placed around them): busiest rank {max(load):.3e} NS FLOPs (max/mean {imbalance(load):.2f}) → "
                 f"{ns_seconds * 1e3:.2f} ms against {free_ns_seconds * 1e3:.2f} ms when every matrix may go anywhere "
                 "(section 3): fixed experts leave LPT less room around the largest matrices; expert matrices never "
                 "leave their replicas.")
    cell = (f"XS.2 / M.1 at EP = {P}: NVLink {shares['laguna-xs2'][0]:.2f} / {shares['laguna-m1'][0]:.2f}, InfiniBand "
            f"{shares['laguna-xs2'][1]:.2f} / {shares['laguna-m1'][1]:.2f} (H100, {args.mfu:.0%} MFU)")
    return lines, cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ranks", type=int, default=6144)
    parser.add_argument("--h100-tflops", type=float, default=989.0, help="H100 SXM dense bf16 peak")
    parser.add_argument("--ns-efficiency", type=float, default=0.5, help="fraction of peak Newton–Schulz reaches")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization of the training step")
    parser.add_argument("--link-gbps", type=float, default=400.0, help="per-GPU InfiniBand bandwidth, Gbit/s")
    parser.add_argument("--hidden", type=float, default=0.7, help="share of optimizer communication hidden")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ep", type=int, default=8, help="expert-parallel degree (8: one HGX node's NVLink domain)")
    parser.add_argument("--nvlink-gbps", type=float, default=3600.0, help="H100 NVLink 4, per GPU and direction, Gbit/s")
    parser.add_argument("--dispatch-bytes", type=int, default=2, help="bytes per dispatched element (bf16)")
    # Measured by `python -m benchmarks.expert_parallel` (benchmarks/RESULTS.md, issue 18), W = 4, 512 tokens per rank.
    parser.add_argument("--cpu-counted-mb", type=float, default=CPU_CALIBRATION["counted_mb"])
    parser.add_argument("--cpu-law-mb", type=float, default=CPU_CALIBRATION["law_mb"])
    parser.add_argument("--cpu-a2a-gbs", type=float, default=CPU_CALIBRATION["gbs"])
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    # 1. The cost law on this machine.
    torch.set_num_threads(max(1, torch.get_num_threads()))
    measured = measure([(256, 256), (256, 1024), (512, 512), (512, 2048), (1024, 1024), (1024, 4096)], args.repeats)
    rates = [rate for _, _, rate in measured]
    spread = max(rates) / min(rates)
    lines = ["**1. Newton–Schulz cost law on this machine** (fp32, 5 quintic steps, one matrix):", "",
             "| shape | seconds | FLOPs (5·(4P²Q+2P³)) | achieved GFLOP/s |", "|---|---|---|---|"]
    for (rows, cols), seconds, rate in measured:
        lines.append(f"| {rows}×{cols} | {seconds:.4f} | {newton_schulz_flops(rows, cols, 5):.3e} | {rate / 1e9:.1f} |")
    lines += ["", f"Achieved rate varies {spread:.2f}× across shapes (small matrices run below peak), so FLOPs ∝ P²Q "
              "is the right balancing weight for the large matrices that dominate.", ""]

    # 2. M.1's matrices and owners.
    with torch.device("meta"):
        model = LagunaForCausalLM(preset_config("laguna-m1"))
    groups = group_parameters(model)
    blocks = blocks_of(groups.muon)
    shapes = Counter((b.rows, b.cols) for b in blocks)
    total_flops = sum(newton_schulz_flops(b.rows, b.cols, 5) for b in blocks)
    owners = assign_owners(blocks, args.ranks)
    load = [5 * cost for cost in load_per_rank(owners, args.ranks)]  # Block.cost is one step
    busiest = max(load)
    largest = max(newton_schulz_flops(b.rows, b.cols, 5) for b in blocks)
    lines += ["**2. Laguna M.1's Muon matrices** (`lagoon model info laguna-m1`):", "",
              "| matrix shape | count | NS GFLOPs each | share of NS FLOPs |", "|---|---|---|---|"]
    for (rows, cols), count in sorted(shapes.items(), key=lambda kv: -kv[1] * newton_schulz_flops(*kv[0], 5)):
        flops = newton_schulz_flops(rows, cols, 5)
        lines.append(f"| {rows}×{cols} | {count:,} | {flops / 1e9:,.1f} | {count * flops / total_flops:.1%} |")
    ns_seconds = busiest / (args.h100_tflops * 1e12 * args.ns_efficiency)
    lines += ["", f"{len(blocks):,} matrices, {total_flops:.3e} NS FLOPs per step; LPT over {args.ranks:,} ranks: busiest rank "
              f"{busiest:.3e} FLOPs (mean {statistics.mean(load):.3e}, max/mean {imbalance(load):.2f}; the largest single "
              f"matrix alone is {largest:.3e}).", ""]

    # 3. Communication (FSDP2 with whole experts per rank: only non-expert matrices travel).
    moving = [m for m in groups.muon if m.param.dim() == 2]
    moving_elements = sum(m.param.numel() for m in moving)
    bytes_per_rank = moving_elements / args.ranks * (4 + 2)  # fp32 gradient shard in, bf16 update shard out
    comm_seconds = bytes_per_rank / (args.link_gbps / 8 * 1e9)
    exposed = comm_seconds * (1 - args.hidden)
    optimizer_seconds = ns_seconds + exposed
    # 4. Step time: 6·N_active FLOPs per token plus causal attention 6·L·T·(H·Dh) (Kaplan et al. 2020 §2.1).
    config = model.config
    active = 23.4e9
    attention = 6 * config.num_hidden_layers * args.seq_len * config.num_attention_heads * config.head_dim / 2
    flops_per_token = 6 * active + attention
    cluster = args.ranks * args.h100_tflops * 1e12 * args.mfu
    tokens = optimizer_seconds / 0.01 * cluster / flops_per_token
    per_expert = tokens * config.num_experts_per_tok / config.num_experts
    lines += ["**3. Time on H100s** (assumptions: "
              f"{args.h100_tflops:.0f} TFLOP/s bf16 peak, Newton–Schulz at {args.ns_efficiency:.0%} of it, training at "
              f"{args.mfu:.0%} MFU, {args.link_gbps:.0f} Gb/s per GPU, {args.hidden:.0%} of optimizer communication hidden):", "",
              f"- Newton–Schulz on the busiest rank: {ns_seconds * 1e3:.2f} ms",
              f"- communication: {moving_elements / 1e9:.2f} B non-expert Muon elements move (experts stay on their FSDP2/EP "
              f"holder); {bytes_per_rank / 1e6:.1f} MB per rank per step → {comm_seconds * 1e3:.2f} ms, {exposed * 1e3:.2f} ms exposed",
              f"- optimizer step ≈ {optimizer_seconds * 1e3:.2f} ms (AdamW on 1/W of the non-matrix parameters is negligible)",
              f"- training step: {flops_per_token:.3e} FLOPs per token; {cluster / 1e18:.2f} EFLOP/s sustained",
              f"- < 1 % needs a step of ≥ {optimizer_seconds / 0.01:.2f} s, i.e. a global batch of ≥ {tokens / 1e6:.1f} M tokens "
              f"({tokens / args.seq_len:,.0f} sequences of {args.seq_len}) = ≥ {per_expert / 1e6:.2f} M tokens per expert per step "
              f"(top-{config.num_experts_per_tok} of {config.num_experts})."]
    balanced = statistics.mean(load) / (args.h100_tflops * 1e12 * args.ns_efficiency) + exposed
    balanced_tokens = balanced / 0.01 * cluster / flops_per_token
    above = sum(count for shape, count in shapes.items() if newton_schulz_flops(*shape, 5) > statistics.mean(load))
    lines.append(f"- the floor is the largest matrix ({largest:.3e} FLOPs) on one rank; if every rank carried the mean load "
                 f"(splitting the {above} matrices costlier than the mean over several ranks each), "
                 f"the step would be {balanced * 1e3:.2f} ms and < 1 % would need ≥ {balanced_tokens / 1e6:.1f} M tokens "
                 f"(≥ {balanced_tokens * config.num_experts_per_tok / config.num_experts / 1e6:.2f} M per expert).")
    ep_lines, ep_cell = expert_parallel_lines(args, tokens, ns_seconds)
    lines += ["", *ep_lines, "",
              table_row("distributed_muon_cost_model", "stated", f"reachable at ≥ {tokens / 1e6:.1f}M tokens per step",
                        ""),
              table_row("distributed_muon_cost_model.ep", "stated", ep_cell, "")]
    print("\n".join(lines))
    if not args.no_record:
        record("Distributed Muon cost model: Laguna M.1 on 6,144 H100s (issue 5)", lines)


if __name__ == "__main__":
    main()
