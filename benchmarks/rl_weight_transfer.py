"""Claim: the RL trainer moves new weights into a running inference server at a good fraction of memcpy speed.

A real `lagoon serve` process on a random-weight checkpoint of the given preset (fp32), and the trainer's own
publisher (`lagoon.weights.publish.WeightPublisher`) in this process: ``shared_memory`` (the trainer copies each
tensor once into a /dev/shm segment, the server copies it into its parameters, `lagoon.weights.shared_memory`),
``files`` (versioned safetensors directory, server loads it), ``shm`` (the same in /dev/shm) and ``broadcast``
(gloo, bucketed, pause/update/resume). Each update is timed from the trainer's call to every server serving
the new version (the server's digest is checked against the trainer's afterwards, outside the timing). The
shared-memory publisher lives across rounds as in an RL run (its segments are created and mapped by one
warm-up update before the rounds, as the memcpy's target pages are touched once before its rounds). The baseline is a memcpy of the same bytes in this process
(``copy_`` of every tensor into a preallocated twin), timed in every round between the transfers so that
the load of a shared machine weighs on both alike. Reported: median seconds and GB/s per path and the
ratio to memcpy (goal ≥ 0.5×).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import record
from lagoon.config import load_config
from lagoon.weights.tensors import weights_digest
from lagoon.model import LagunaForCausalLM, preset_config, save_pretrained
from lagoon.rl.servers import LocalServers
from lagoon.weights.publish import WeightPublisher


def memcpy_seconds(sources: list[torch.Tensor], targets: list[torch.Tensor]) -> float:
    started = time.perf_counter()
    for target, source in zip(targets, sources):
        target.copy_(source)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bucket-mb", type=float, default=64)
    parser.add_argument("--paths", nargs="+", default=["shared_memory", "files", "shm", "broadcast"],
                        choices=["shared_memory", "files", "shm", "broadcast"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of this process (the trainer side and the memcpy baseline alike)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = LagunaForCausalLM(preset_config(args.preset))
    num_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with tempfile.TemporaryDirectory() as directory:
        run_dir = Path(directory) / "run"
        init = save_pretrained(model, Path(directory) / "init")
        config = load_config(None, [f'rl.init_checkpoint="{init}"', f"rl.weights.bucket_mb={args.bucket_mb}",
                                    "rl.servers.max_batch_size=4"])
        servers = LocalServers(config, run_dir)
        urls = servers.start()
        results: dict[str, list[dict]] = {}
        sources = [t.detach() for t in model.state_dict().values()]
        targets = [torch.empty_like(t) for t in sources]
        memcpy_seconds(sources, targets)                         # first touch of the target pages
        copies = []
        shared = None
        version = 0
        try:
            if "shared_memory" in args.paths:
                shared = WeightPublisher(replace(config.rl.weights, transfer="shared_memory"), run_dir, urls)
                shared.publish(model, version)                   # creates and maps the two slots
            for _ in range(args.rounds):
                copies.append(memcpy_seconds(sources, targets))
                for transfer in args.paths:                      # interleaved, so machine noise hits all alike
                    version += 1
                    with torch.no_grad():
                        for parameter in model.parameters():
                            parameter.add_(1e-3)
                    publisher = shared if transfer == "shared_memory" else \
                        WeightPublisher(replace(config.rl.weights, transfer=transfer), run_dir, urls)
                    update = publisher.publish(model, version)
                    (served,) = publisher.server_weights()
                    assert not update["failed_servers"], update["failed_servers"]
                    assert served["policy_version"] == version and served["digest"] == weights_digest(model)
                    update["server_copy_s"] = served["last_update"]["seconds"]
                    results.setdefault(transfer, []).append(update)
                    print(f"{transfer}: {update['sync_s']:.3f} s, {update['gb_per_s']:.3f} GB/s "
                          f"(memcpy {copies[-1]:.3f} s)", flush=True)
                    if transfer == "shm":
                        publisher.close()
        finally:
            if shared is not None:
                shared.close()
            servers.stop()
    copy_s = statistics.median(copies)
    copy_gbps = num_bytes / copy_s / 1e9
    names = {"files": "files (RUN_DIR/weights, server loads)", "shm": "safetensors in /dev/shm (server loads)",
             "broadcast": "torch.distributed broadcast (gloo, pause/update/resume)",
             "shared_memory": "shared-memory segment (`load_shared`: trainer → segment → parameters)"}
    load = os.getloadavg()[0]
    lines = [f"Preset `{args.preset}`: {num_bytes / 1e6:,.0f} MB of fp32 weights to one local `lagoon serve` "
             f"(digest checked after every update); {args.rounds} rounds, each path and the memcpy interleaved; "
             f"medians. Load average during the run: {load:.1f} on {os.cpu_count()} CPUs.", "",
             "| path | seconds (trainer call → server serving it) | GB/s | vs memcpy |", "|---|---|---|---|",
             f"| memcpy of the same bytes (baseline) | {copy_s:.3f} | {copy_gbps:.2f} | 1.00× |"]
    for transfer, updates in results.items():
        seconds = statistics.median(u["sync_s"] for u in updates)
        gbps = num_bytes / seconds / 1e9
        lines.append(f"| {names[transfer]} | {seconds:.3f} | {gbps:.2f} | {gbps / copy_gbps:.2f}× |")
    if "shared_memory" in results:
        updates = results["shared_memory"]
        write_s = statistics.median(u["segment_write_s"] for u in updates)
        server_s = statistics.median(u["server_copy_s"] for u in updates)
        sync_s = statistics.median(u["sync_s"] for u in updates)
        lines += ["", f"Shared-memory update, medians: trainer → segment copy {write_s:.3f} s "
                      f"({num_bytes / write_s / 1e9:.2f} GB/s); the server's `load_shared` (pause, copy each tensor "
                      f"into its parameters once written, resume) {server_s:.3f} s, overlapping the trainer's "
                      f"copy; whole update {sync_s:.3f} s. Without the overlap an update is two copies, i.e. at "
                      f"most about 0.5× one memcpy."]
    best = max(num_bytes / statistics.median(u["sync_s"] for u in updates) / 1e9 for updates in results.values())
    verdict = "met" if best / copy_gbps >= 0.5 else "not met"
    lines += ["", f"Goal ≥ 0.5× memcpy: {verdict} (best path {best / copy_gbps:.2f}×)."]
    print("\n".join(lines))
    if not args.no_record:
        record("RL weight transfer vs memcpy", lines)


if __name__ == "__main__":
    main()
