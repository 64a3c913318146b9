"""Claims (issue 5): distributed Muon's optimizer step takes ≤ 1.2/W of replicated Muon's; Newton–Schulz load
is balanced across ranks (max/mean ≤ 1.10); ≥ 70 % of its communication is hidden behind Newton–Schulz.

W gloo ranks on CPU (one thread each), the same model and global batch for every scheme, timed side by
side in one run. Each rank computes its gradients once (forward/backward on its slice of the batch); before
every timed step the gradients are restored, so only the optimizer step is timed — from "local gradients
ready" to "every rank holds the updated parameters", gradient communication included:

- ``distributed``: lagoon's distributed Muon (``optim.distributed = "ddp"``): reduce-scatter to owners,
  Newton–Schulz once per matrix, all-gather of updates, overlapped; ZeRO-1 AdamW;
- ``replicated``: all-reduce of all gradients (what DDP does), then every rank runs the whole optimizer;
- ``keller_jordan``: all-reduce, then KellerJordan/Muon's distributed scheme — parameters sorted by size,
  rank r updates parameters r, r+W, …, and each group of W is all-gathered (no overlap, no batching);
  AdamW replicated;
- ``sharded_adamw``: AdamW for everything, ZeRO-1 (``name = "adamw"``, ``distributed = "ddp"``).

Hidden communication: the distributed step is run once more with Newton–Schulz replaced by a no-op of
the same output shape; its time blocked in collectives is the communication cost C. In the real step the
time blocked is E; the hidden share is 1 − E / C.

With ``--ep`` (issue 18) the run times instead the same model with its experts sharded over the W ranks
(`lagoon.parallel.expert`, EP = W): ``distributed_ep`` is distributed Muon on that layout — each expert's
matrices orthogonalized on their holder with no communication, the other matrices as before — beside
``distributed``, where the experts' matrices travel to their owners like every other matrix; balance and
hidden share are reported for both layouts the same way.

One run spawns the W ranks, builds every scheme and times `--steps` round-robin rounds after a warm-up
round; a run's figure is the slowest rank's median. The whole run is repeated `--runs` times (fresh
processes each time), and every figure is reported as the median and range over all runs — the spread of
all of them, not the best. Newton–Schulz runs in ``--ns-dtype`` (bf16 by default) with
``optim.ns_matmul = "auto"``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from benchmarks.common import median, record, spawn_gloo, spread, table_row
from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.optim import DataParallel, OptimConfig, build_optimizer
from lagoon.optim.functional import adamw_update, muon_direction, muon_scale
from lagoon.optim.newton_schulz import newton_schulz
from lagoon.parallel.expert import apply_expert_parallel

SCHEMES = ("distributed", "replicated", "keller_jordan", "sharded_adamw")
EP_SCHEMES = ("distributed_ep", "communication_only_ep")


def make_model(layers: int) -> LagunaForCausalLM:
    torch.manual_seed(0)
    return LagunaForCausalLM(preset_config("small", num_hidden_layers=layers))


class KellerJordanMuon:
    """KellerJordan/Muon's distributed step (its ``Muon.step``) on all-reduced gradients, with lagoon's update rule."""

    def __init__(self, model, config: OptimConfig, world_size: int, rank: int):
        optimizer = build_optimizer(model, OptimConfig(**{**config.__dict__, "distributed": "none"}))
        self.groups, self.config, self.W, self.rank = optimizer.groups, config, world_size, rank
        self.matrices = sorted(self.groups.muon, key=lambda m: -m.param.numel())
        self.momentum = {m.name: torch.zeros_like(m.param) for m in self.matrices[rank::world_size]}
        self.adamw = [p for _, p in self.groups.adamw + self.groups.adamw_no_decay]
        self.exp_avg = [torch.zeros_like(p) for p in self.adamw]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.adamw]
        self.steps = 0

    @torch.no_grad()
    def step(self) -> None:
        config, W = self.config, self.W
        self.steps += 1
        for base in range(0, len(self.matrices), W):
            chunk = self.matrices[base : base + W]
            if self.rank < len(chunk):
                matrix = chunk[self.rank]
                direction = muon_direction(matrix.param.grad, self.momentum[matrix.name], config.momentum, config.nesterov)
                update = newton_schulz(direction.view(-1, matrix.rows, matrix.cols), config.ns_steps,
                                       config.ns_coefficients, config.ns_dtype, config.ns_matmul)
                matrix.param.mul_(1 - config.lr * config.weight_decay)
                matrix.param.add_(update.view_as(matrix.param), alpha=-config.lr * muon_scale(matrix.rows, matrix.cols, config.muon_scaling))
            padded = [m.param.detach() for m in chunk] + [torch.empty(0)] * (W - len(chunk))
            _gather_uneven(padded, padded[self.rank])
        adamw_update(self.adamw, [p.grad for p in self.adamw], self.exp_avg, self.exp_avg_sq, step=self.steps,
                     lr=config.adamw_lr, betas=tuple(config.adamw_betas), eps=config.adamw_eps, weight_decay=0.0)


def _gather_uneven(padded: list[torch.Tensor], mine: torch.Tensor) -> None:
    """KellerJordan/Muon's all-gather of one group of W parameters (through a flat buffer, since sizes differ)."""
    size = max(t.numel() for t in padded)
    buffer = torch.zeros(size)
    buffer[: mine.numel()] = mine.reshape(-1)
    out = [torch.empty(size) for _ in padded]
    dist.all_gather(out, buffer)
    for target, source in zip(padded, out):
        target.reshape(-1).copy_(source[: target.numel()])


def all_reduce_grads(params: list[torch.Tensor], world_size: int, bucket_elements: int = 2**20) -> None:
    """What DDP does with gradients: average them in ~4 MiB flat buckets."""
    bucket: list[torch.Tensor] = []
    for param in params + [None]:
        if param is not None:
            bucket.append(param.grad)
        if bucket and (param is None or sum(g.numel() for g in bucket) >= bucket_elements):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat /= world_size
            offset = 0
            for grad in bucket:
                grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                offset += grad.numel()
            bucket = []


def build(scheme: str, layers: int, config: OptimConfig, world_size: int, rank: int):
    """(saved gradients, the function that runs one optimizer step, the optimizer) for one scheme."""
    model = make_model(layers)
    if scheme.endswith("_ep"):
        apply_expert_parallel(model, dist.group.WORLD, "cpu")
    ids = torch.randint(0, model.config.vocab_size, (world_size * 2, 128), generator=torch.Generator().manual_seed(0))
    local = ids[rank * 2 : (rank + 1) * 2]
    model(local, targets=local).loss.backward()
    saved = {p: p.grad.clone() for p in model.parameters() if p.grad is not None}
    data_parallel = DataParallel.from_group()
    params = [p for p in model.parameters() if p.requires_grad]
    if scheme.removesuffix("_ep") in ("distributed", "communication_only"):
        optimizer = build_optimizer(model, OptimConfig(**{**config.__dict__, "distributed": "ddp"}), data_parallel)
        if scheme.startswith("communication_only"):
            optimizer._orthogonalize = lambda grad, momentum: torch.zeros(grad.shape, dtype=torch.bfloat16)
        return saved, optimizer.step, optimizer
    if scheme == "sharded_adamw":
        optimizer = build_optimizer(model, OptimConfig(**{**config.__dict__, "name": "adamw", "distributed": "ddp"}),
                                    data_parallel)
        return saved, optimizer.step, optimizer
    optimizer = (build_optimizer(model, config, data_parallel) if scheme == "replicated"
                 else KellerJordanMuon(model, config, world_size, rank))

    def run():
        all_reduce_grads(params, world_size)
        optimizer.step()

    return saved, run, optimizer


def worker(rank: int, world_size: int, layers: int, steps: int, out: str, ep: bool = False,
           ns_dtype: str = "bfloat16") -> None:
    """Every scheme built side by side, then timed round-robin so machine noise hits them alike."""
    config = OptimConfig(ns_dtype=ns_dtype, bucket_mb=4.0)
    names = ("distributed", "communication_only", *EP_SCHEMES) if ep else (*SCHEMES, "communication_only")
    schemes = {name: build(name, layers, config, world_size, rank) for name in names}
    samples: dict[str, dict[str, list[float]]] = {name: {"time": [], "newton_schulz": [], "waiting": []} for name in schemes}
    for round_index in range(steps + 1):  # round 0 is a warm-up
        for name, (saved, run, optimizer) in schemes.items():
            for param, grad in saved.items():
                param.grad = grad.clone()
            dist.barrier()
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            if round_index:
                timings = getattr(optimizer, "timings", {})
                samples[name]["time"].append(elapsed)
                samples[name]["newton_schulz"].append(timings.get("newton_schulz", 0.0))
                samples[name]["waiting"].append(timings.get("waiting", 0.0))
    results = {name: {key: statistics.median(values) for key, values in found.items()} for name, found in samples.items()}
    for name, found in samples.items():
        results[name]["rounds"] = found["time"]
    for name, (_, _, optimizer) in schemes.items():
        results[name]["balance"] = getattr(optimizer, "load_balance", None)
    torch.save(results, Path(out) / f"rank{rank}.pt")


def _figures(ranks: list[dict], scheme: str, communication_only: str) -> dict[str, float]:
    """Slowest rank's step, measured NS balance, model balance, communication C, exposed E, hidden share."""
    ns = [r[scheme]["newton_schulz"] for r in ranks]
    communication = statistics.mean(r[communication_only]["waiting"] for r in ranks)
    exposed = statistics.mean(r[scheme]["waiting"] for r in ranks)
    return {"time": max(r[scheme]["time"] for r in ranks), "measured": max(ns) / statistics.mean(ns),
            "model": ranks[0][scheme]["balance"], "C": communication, "E": exposed, "hidden": 1 - exposed / communication}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the `small` preset")
    parser.add_argument("--steps", type=int, default=5, help="timed round-robin rounds per run")
    parser.add_argument("--runs", type=int, default=3, help="independent runs per world size")
    parser.add_argument("--ep", action="store_true",
                        help="time distributed Muon with and without expert ownership (the EP layout) instead")
    parser.add_argument("--ns-dtype", choices=["bfloat16", "float32"], default="bfloat16",
                        help="Newton–Schulz precision (float32 where the CPU has no fast bf16 matmul)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    lines = [f"Model: `small` preset with {args.layers} layers; optimizer step time = the slowest rank's median over "
             f"{args.steps} round-robin rounds, gradient communication included; {args.ns_dtype} Newton–Schulz, 1 thread "
             f"per rank; {args.runs} independent runs per W, each row one run.", ""]
    if args.ep:
        lines += ["Distributed Muon (`ddp`) on the same model with replicated experts (every expert matrix travels to its "
                  "owner and back) and with experts sharded over the W ranks (EP = W; each expert's matrices owned by "
                  "their holder, no communication for them):", "",
                  "| W | run | layout | step s | EP / replicated | NS max/mean (measured) | NS max/mean (cost model) "
                  "| comm C s | exposed E s | hidden 1−E/C |", "|---|---|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["| W | run | distributed s | replicated s | Keller Jordan s | sharded AdamW s | distributed / replicated | "
                  "per-round range | goal 1.2/W | NS max/mean (measured) | NS max/mean (cost model) | comm C s | "
                  "exposed E s | hidden 1−E/C |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    summary: dict[int, dict[str, list[float]]] = {}
    for world_size in args.world_sizes:
        found = summary[world_size] = {"ratio": [], "balance": [], "hidden": []}
        for run_index in range(args.runs):
            with tempfile.TemporaryDirectory() as directory:
                spawn_gloo(worker, world_size, args.layers, args.steps, directory, args.ep, args.ns_dtype)
                ranks = [torch.load(Path(directory) / f"rank{r}.pt") for r in range(world_size)]
            base = _figures(ranks, "distributed", "communication_only")
            if args.ep:
                ep = _figures(ranks, "distributed_ep", "communication_only_ep")
                found["ratio"].append(ep["time"] / base["time"])
                for label, f, ratio in (("experts replicated", base, "1"),
                                        ("EP = W", ep, f"{ep['time'] / base['time']:.3f}")):
                    lines.append(f"| {world_size} | {run_index + 1} | {label} | {f['time']:.3f} | {ratio} | "
                                 f"{f['measured']:.3f} | {f['model']:.3f} | {f['C']:.3f} | {f['E']:.3f} | "
                                 f"{f['hidden']:.0%} |")
                    print(lines[-1], flush=True)
                continue
            slowest = {s: max(r[s]["time"] for r in ranks) for s in SCHEMES}
            per_round = [max(r["distributed"]["rounds"][i] for r in ranks) / max(r["replicated"]["rounds"][i] for r in ranks)
                         for i in range(args.steps)]
            ratio = slowest["distributed"] / slowest["replicated"]
            found["ratio"].append(ratio)
            found["balance"].append(base["measured"])
            found["hidden"].append(base["hidden"])
            lines.append(f"| {world_size} | {run_index + 1} | {slowest['distributed']:.3f} | {slowest['replicated']:.3f} | "
                         f"{slowest['keller_jordan']:.3f} | {slowest['sharded_adamw']:.3f} | {ratio:.3f} | "
                         f"{min(per_round):.3f}–{max(per_round):.3f} | {1.2 / world_size:.3f} | "
                         f"{base['measured']:.3f} | {base['model']:.3f} | {base['C']:.3f} | {base['E']:.3f} | "
                         f"{base['hidden']:.0%} |")
            print(lines[-1], flush=True)

    def figure(key: str, fmt: str, scale: float = 1.0, unit: str = "") -> str:
        return ", ".join(f"W={w} {spread([v * scale for v in found[key]], fmt, unit)}" for w, found in summary.items())

    def status(hits: dict[int, bool]) -> str:
        if all(hits.values()):
            return "met"
        if not any(hits.values()):
            return "missed"
        return ", ".join(f"W={w} {'met' if hit else 'missed'}" for w, hit in hits.items())

    runs = f" over {args.runs} runs" if args.runs > 1 else ""
    if args.ep:
        lines += ["", "Figures: median (min–max) over runs.", "",
                  table_row("distributed_muon.ep", "stated", figure("ratio", "{:.2f}", unit="×") + runs
                            + f" ({args.ns_dtype} Newton–Schulz, gloo, 2 cores)", "")]
    else:
        lines += ["", "Figures: median (min–max) over runs.", "",
                  table_row("distributed_muon", "≤ 1.2/W", figure("ratio", "{:.2f}") + runs + " (gloo, 2 cores)",
                            status({w: median(f["ratio"]) <= 1.2 / w for w, f in summary.items()})),
                  table_row("distributed_muon.balance", "≤ 1.10", figure("balance", "{:.2f}") + runs,
                            status({w: median(f["balance"]) <= 1.10 for w, f in summary.items()})),
                  table_row("distributed_muon.hidden", "≥ 70%",
                            figure("hidden", "{:.0f}", 100, "%") + runs + " (gloo, 2 cores)",
                            status({w: median(f["hidden"]) >= 0.70 for w, f in summary.items()}))]
    print("\n".join(line for line in lines if line.startswith("Table row")))
    if not args.no_record:
        record("Distributed Muon with expert ownership (EP layout) vs without (issue 18)" if args.ep else
               "Distributed Muon vs replicated, Keller Jordan's scheme and sharded AdamW (issue 21)", lines)

if __name__ == "__main__":
    main()
