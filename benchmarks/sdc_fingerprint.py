"""Claim: lagoon's SDC fingerprint reads weights at ≥ 0.5× memcpy speed and ≥ 10× the SHA-1 method.

The weights of a Laguna preset (every parameter tensor, fp32 and bf16), digested three ways, round-robin
in one process:

- lagoon: `Fingerprinter` (4 lanes, 128 bits per tensor) with the default kernel for the device;
- memcpy: copying the same tensors into preallocated buffers (``Tensor.copy_``), the speed of light for
  anything that reads every byte;
- SHA-1 over a CPU copy: Megatron-LM's ``check_param_hashes_across_dp_replicas``, which hashes
  ``param.data.to("cpu").float().numpy()`` with ``hashlib.sha1`` per parameter.

Throughput is bytes of the tensors (in their own dtype) per second; ratios are lagoon ÷ baseline per
round (median and range over rounds), after a warm-up call of each, the order alternating between rounds.
Each thread count is a separate measurement: the fingerprint and the memcpy use that many threads, the
SHA-1 method one (hashlib), so the SHA-1 comparison is per core at 1 thread. Under oversubscription (more
runnable threads than cores) torch's multi-threaded copies stall at every parallel region, which once
made memcpy look 5× slower than it is; see docs/LOG.md.
"""

from __future__ import annotations

import argparse
import os
import hashlib

import torch

from benchmarks.common import interleaved, median, ratios, record, spread, table_row
from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.sdc.fingerprint import Fingerprinter


def sha1_method(tensors: list[torch.Tensor]) -> list[bytes]:
    """Megatron-LM's per-parameter SHA-1 of a float32 CPU copy (our own code, the same method)."""
    return [hashlib.sha1(t.detach().to("cpu").float().numpy(force=True)).digest() for t in tensors]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to measure at")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = LagunaForCausalLM(preset_config(args.preset))
    fingerprinter = Fingerprinter(lanes=4)
    lines = [f"Weights of the `{args.preset}` preset on {device.type}; kernel: {fingerprinter.kernel_for(device)}; "
             f"{args.rounds} rounds. Rates and ratios are median (min–max) over rounds.", "",
             "| dtype | threads | tensors | MB | lagoon GB/s | memcpy GB/s | SHA-1 method GB/s | lagoon ÷ memcpy "
             "| lagoon ÷ SHA-1 |", "|---|---|---|---|---|---|---|---|---|"]
    figures = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            tensors = [p.detach().to(device=device, dtype=dtype).contiguous() for p in model.parameters()]
            buffers = [torch.empty_like(t) for t in tensors]
            nbytes = sum(t.numel() * t.element_size() for t in tensors)

            def sync():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            def ours():
                fingerprinter.digest(tensors)  # returns a CPU table: synchronises by itself

            def memcpy():
                torch._foreach_copy_(buffers, tensors)
                sync()

            def sha1():
                sha1_method(tensors)

            # The digest is a pure function of the bits: the same on every call.
            assert torch.equal(fingerprinter.digest(tensors), fingerprinter.digest(tensors))
            times = interleaved({"lagoon": ours, "memcpy": memcpy, "sha1": sha1}, rounds=args.rounds, warmup=1)
            rate = {name: [nbytes / s / 1e9 for s in values] for name, values in times.items()}
            vs_memcpy = ratios(times["memcpy"], times["lagoon"])
            vs_sha1 = ratios(times["sha1"], times["lagoon"])
            figures[(threads, dtype_name)] = (vs_memcpy, vs_sha1)
            lines.append(f"| {dtype_name} | {threads} | {len(tensors)} | {nbytes / 1e6:,.0f} | {spread(rate['lagoon'])} | "
                         f"{spread(rate['memcpy'])} | {spread(rate['sha1'])} | {spread(vs_memcpy, '{:.2f}', '×')} | "
                         f"{spread(vs_sha1, '{:.1f}', '×')} |")
            print(lines[-1], flush=True)

    def figure(index: int, fmt: str) -> str:
        return ", ".join(f"{'bf16' if d == 'bfloat16' else 'fp32' if d == 'float32' else d} {t}T "
                         f"{spread(values[index], fmt, '×')}" for (t, d), values in figures.items())

    def status(index: int, goal: float) -> str:
        hits = {key: median(values[index]) >= goal for key, values in figures.items()}
        if all(hits.values()):
            return "met"
        if not any(hits.values()):
            return "missed"
        return "met for " + ", ".join(f"{d} at {t}T" for (t, d), hit in hits.items() if hit) + "; missed otherwise"

    lines += ["", "Goals: ≥ 0.5× memcpy and ≥ 10× the SHA-1 method. T = threads of the fingerprint and the memcpy; "
                  "SHA-1 always runs on one.", "",
              table_row("sdc_fingerprint.memcpy", "≥ 0.5×", figure(0, "{:.2f}"), status(0, 0.5)),
              table_row("sdc_fingerprint.sha1", "≥ 10×", figure(1, "{:.1f}"), status(1, 10.0))]
    print("\n".join(lines[-2:]))
    if not args.no_record:
        record("SDC fingerprint throughput vs memcpy and SHA-1 over a CPU copy (issue 21)", lines)


if __name__ == "__main__":
    main()
