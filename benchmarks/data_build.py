"""Claim: the embedded corpus builds in about 2–3 minutes on 2 cores (the demo has 30 minutes in all).

Runs ``lagoon.data.build.build`` on the embedded default config with 2 worker processes into a fresh
directory, and reports the wall time per stage, the CPU time of the build and its workers (which other
load on a shared machine does not inflate; CPU / 2 bounds the wall time on two idle cores from below),
and the size of every leaf and held-out set.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from benchmarks.common import record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="the quick variant instead")
    parser.add_argument("--out", default="", help="keep the shard set here (default: a temporary directory)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from lagoon.data.build import build, embedded_config

    config = embedded_config(quick=args.quick, build={"quick": args.quick, "workers": args.workers})
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.out) if args.out else Path(scratch) / "shards"
        load = os.getloadavg()[0]
        started = time.perf_counter()
        before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        build(config, out, quiet=True)
        wall = time.perf_counter() - started
        after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
        manifest = json.loads((out / "manifest.json").read_text())
        stages = json.loads((out / "stats.json").read_text())["metrics"]
    lines = [f"{'Quick' if args.quick else 'Full'} embedded build, {args.workers} workers: **{wall:.1f} s** wall, "
             f"{cpu:.1f} CPU-seconds (build + workers); 1-minute load average at start {load:.1f} on "
             f"{os.cpu_count()} CPUs, niceness {os.nice(0)} (on a shared machine wall time includes waiting for "
             "other jobs).", "",
             "Stages (s): " + ", ".join(f"{s['stage']} {s['seconds']:.1f}" for s in stages if "seconds" in s), "",
             "| leaf | group | documents | tokens | raw MB |", "|---|---|---|---|---|"]
    for leaf, entry in manifest["leaves"].items():
        lines.append(f"| {leaf} | {entry['group']} | {entry['num_documents']:,} | {entry['num_tokens']:,} | "
                     f"{entry['raw_bytes'] / 1e6:.2f} |")
    total = sum(e["num_tokens"] for e in manifest["leaves"].values())
    lines.append(f"| **total** | | {sum(e['num_documents'] for e in manifest['leaves'].values()):,} | {total:,} | "
                 f"{sum(e['raw_bytes'] for e in manifest['leaves'].values()) / 1e6:.2f} |")
    lines += ["", "| held-out set | documents | tokens | bytes |", "|---|---|---|---|"]
    for group, entry in manifest["eval"].items():
        lines.append(f"| {group} | {entry['num_documents']:,} | {entry['num_tokens']:,} | {entry['num_bytes']:,} |")
    print("\n".join(lines))
    if not args.no_record:
        record("Data: embedded corpus build time and size per leaf (issue: data pipeline)", lines)


if __name__ == "__main__":
    main()
