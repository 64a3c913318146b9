"""Claim: lagoon's SDC fingerprint reads weights at ≥ 0.5× memcpy speed and ≥ 10× the SHA-1 method.

The weights of a Laguna preset (every parameter tensor, fp32 and bf16), digested three ways, round-robin
in one process:

- lagoon: `Fingerprinter` (4 lanes, 128 bits per tensor) with the default kernel for the device;
- memcpy: copying the same tensors into preallocated buffers (``Tensor.copy_``), the speed of light for
  anything that reads every byte;
- SHA-1 over a CPU copy: Megatron-LM's ``check_param_hashes_across_dp_replicas``, which hashes
  ``param.data.to("cpu").float().numpy()`` with ``hashlib.sha1`` per parameter.

Throughput is bytes of the tensors (in their own dtype) per second; ratios are lagoon ÷ baseline.
"""

from __future__ import annotations

import argparse
import os
import hashlib

import torch

from benchmarks.common import interleaved, median, record
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
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = LagunaForCausalLM(preset_config(args.preset))
    fingerprinter = Fingerprinter(lanes=4)
    lines = [f"Weights of the `{args.preset}` preset on {device.type}, {torch.get_num_threads()} threads; "
             f"kernel: {fingerprinter.kernel_for(device)}.", "",
             "| dtype | tensors | MB | lagoon GB/s | memcpy GB/s | SHA-1 method GB/s | lagoon ÷ memcpy | lagoon ÷ SHA-1 |",
             "|---|---|---|---|---|---|---|---|"]
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
        times = interleaved({"lagoon": ours, "memcpy": memcpy, "sha1": sha1}, rounds=args.rounds)
        rate = {name: nbytes / median(values) / 1e9 for name, values in times.items()}
        lines.append(f"| {dtype_name} | {len(tensors)} | {nbytes / 1e6:,.0f} | {rate['lagoon']:.2f} | "
                     f"{rate['memcpy']:.2f} | {rate['sha1']:.2f} | {rate['lagoon'] / rate['memcpy']:.2f}× | "
                     f"{rate['lagoon'] / rate['sha1']:.1f}× |")
        print(lines[-1], flush=True)
    lines += ["", "Goals: ≥ 0.5× memcpy and ≥ 10× the SHA-1 method."]
    lines.append(f"Load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (a shared machine).")
    if not args.no_record:
        record("SDC fingerprint throughput vs memcpy and SHA-1 over a CPU copy (issue 6)", lines)


if __name__ == "__main__":
    main()
