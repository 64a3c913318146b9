"""Claim: a running ``lagoon serve`` takes new weights in seconds, from the checkpoint store or a gloo broadcast.

A real server on a random-weight checkpoint of the given preset. Measured: ``POST /v1/weights/load`` of a
second checkpoint (read safetensors, check, swap), and `lagoon.infer.push_weights` of a third model from
this process over gloo (bucketed broadcast), each followed by a digest check against
`lagoon.infer.weights_digest`. Reported: seconds end to end (HTTP call to reply) and the transfer rate.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx
import torch

from benchmarks.common import record
from benchmarks.infer_server_throughput import start_server
from lagoon.infer import push_weights, weights_digest
from lagoon.model import LagunaForCausalLM, preset_config, save_pretrained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--bucket-mb", type=float, default=None, help="bucket size (default: gloo's, 4 MiB)")
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = preset_config(args.preset)
    models = [LagunaForCausalLM(config) for _ in range(3)]
    size_gb = sum(t.numel() * t.element_size() for t in models[0].state_dict().values()) / 1e9
    lines = [f"Preset `{args.preset}`: {size_gb * 1e3:,.0f} MB of fp32 weights; gloo over loopback, "
             f"{args.bucket_mb or 4:g} MiB buckets; server torch threads: {args.threads}.", "",
             "| path | seconds (request → reply) | transfer rate | digest matches |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as directory:
        first = save_pretrained(models[0], Path(directory) / "v0")
        second = save_pretrained(models[1], Path(directory) / "v1")
        process, url = start_server(first, args.threads, max_batch=4)
        try:
            started = time.perf_counter()
            reply = httpx.post(url + "/v1/weights/load", json={"path": str(second), "version": 1}, timeout=600)
            seconds = time.perf_counter() - started
            reply.raise_for_status()
            update = reply.json()["update"]
            digest = httpx.get(url + "/v1/weights", timeout=600).json()["digest"]
            lines.append(f"| load from the checkpoint store | {seconds:.2f} | {update['gb_per_s']:.2f} GB/s (read + swap) "
                         f"| {digest == weights_digest(models[1])} |")
            print(lines[-1], flush=True)

            started = time.perf_counter()
            bucket_bytes = int(args.bucket_mb * 2**20) if args.bucket_mb else None
            stats = push_weights(models[2], [url], version=2, bucket_bytes=bucket_bytes)
            seconds = time.perf_counter() - started
            digest = httpx.get(url + "/v1/weights", timeout=600).json()["digest"]
            lines.append(f"| gloo broadcast from a trainer process | {seconds:.2f} | {stats.gb_per_s:.2f} GB/s "
                         f"({stats.num_buckets} buckets) | {digest == weights_digest(models[2])} |")
            print(lines[-1], flush=True)
        finally:
            process.terminate()
            process.wait()
    if not args.no_record:
        record("Live weight updates into lagoon serve (issue 8: inference)", lines)


if __name__ == "__main__":
    main()
