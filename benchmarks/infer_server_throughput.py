"""Claim: ``lagoon serve`` turns concurrency into throughput (continuous batching), measured at 1, 8 and 32 clients.

A real ``lagoon serve`` process on a random-weight checkpoint of the given preset; C client threads each
send token-id completion requests (32-token prompt, 64 sampled tokens, end-of-sequence ignored) over
HTTP back to back until every client has finished `--requests-per-client`. Reported: generated tokens/s
across all clients, median request latency, and throughput relative to one client.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from benchmarks.common import record
from benchmarks.infer_common import process_cpu_seconds
from lagoon.model import LagunaForCausalLM, preset_config, save_pretrained


def start_server(checkpoint: Path, threads: int | None, max_batch: int) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "lagoon", "serve", str(checkpoint), "--port", "0", "--max-batch", str(max_batch)]
    if threads:
        command += ["--threads", str(threads)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if "http://" not in line:
        process.kill()
        raise SystemExit(f"lagoon serve did not start: {line}")
    url = line.strip().rsplit(" ", 1)[-1]
    for _ in range(600):
        try:
            if httpx.get(url + "/health").status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("lagoon serve never became healthy")


def measure(url: str, pid: int, clients: int, requests_per_client: int, prompt_len: int, new_tokens: int, vocab: int
            ) -> tuple[float, float, float]:
    """(generated tokens per wall second, per server CPU-second, median latency)."""
    latencies: list[float] = []
    generated = [0]
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(timeout=600) as http:
            for r in range(requests_per_client):
                prompt = [2] + [(index * 7919 + r * 104729 + i * 31) % (vocab - 32) + 32 for i in range(prompt_len - 1)]
                started = time.perf_counter()
                reply = http.post(url + "/v1/completions", json={
                    "prompt": prompt, "max_tokens": new_tokens, "temperature": 1.0, "ignore_eos": True,
                    "return_token_ids": True})
                reply.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - started)
                    generated[0] += len(reply.json()["choices"][0]["token_ids"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started, cpu = time.perf_counter(), process_cpu_seconds(pid)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed, cpu = time.perf_counter() - started, process_cpu_seconds(pid) - cpu
    return generated[0] / elapsed, generated[0] / cpu, statistics.median(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = LagunaForCausalLM(preset_config(args.preset))
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = save_pretrained(model, Path(directory) / f"{args.preset}-random")
        process, url = start_server(checkpoint, args.threads, max_batch=max(args.concurrency))
        try:
            measure(url, process.pid, 1, 1, args.prompt, 8, model.config.vocab_size)  # warm-up
            rows = []
            for clients in args.concurrency:
                rate, cpu_rate, latency = measure(url, process.pid, clients, args.requests_per_client, args.prompt,
                                                  args.new_tokens, model.config.vocab_size)
                rows.append((clients, rate, cpu_rate, latency))
                print(f"{clients} clients: {rate:,.1f} tok/s, {cpu_rate:,.1f} tok/server-CPU-s, "
                      f"median latency {latency:.2f} s", flush=True)
        finally:
            process.terminate()
            process.wait()
    base, cpu_base = rows[0][1], rows[0][2]
    lines = [f"Preset `{args.preset}` (random weights), prompt {args.prompt} tokens, {args.new_tokens} sampled tokens per "
             f"request, {args.requests_per_client} requests per client, server torch threads: {args.threads}. The machine "
             "is shared, so the server's own CPU time is reported beside wall time.", "",
             "| concurrent clients | generated tok/s (wall) | tok per server CPU-s | median latency (s) | "
             "wall throughput vs 1 client | CPU efficiency vs 1 client |", "|---|---|---|---|---|---|"]
    lines += [f"| {c} | {rate:,.1f} | {cpu_rate:,.1f} | {latency:.2f} | {rate / base:.1f}× | {cpu_rate / cpu_base:.1f}× |"
              for c, rate, cpu_rate, latency in rows]
    if not args.no_record:
        record("lagoon serve throughput by concurrency (issue 8: inference)", lines)


if __name__ == "__main__":
    main()
