"""``lagoon data build | stats | sample``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    from lagoon.cli import add_config_arguments

    data = subparsers.add_parser("data", help="build, inspect and sample token shard sets")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    build = actions.add_parser("build", help="sources → curation → tokenizer → shards per leaf + manifest")
    add_config_arguments(build)
    build.add_argument("--out", required=True, metavar="DIR", help="shard set directory (resumable)")
    build.add_argument("--workers", type=int, default=None, help="worker processes (default: data.build.workers)")
    build.add_argument("--quiet", action="store_true", help="no progress bars")
    build.add_argument("--repair", action="store_true",
                       help="check every file of a finished (or damaged) shard set and rebuild the leaves, held-out "
                            "sets, tokenizer or manifest that fail (same config only)")
    build.set_defaults(handler=run_build)

    stats = actions.add_parser("stats", help="leaves, held-out sets and curation statistics of a shard set")
    stats.add_argument("dir", metavar="DIR")
    stats.add_argument("--verify", action="store_true", help="also check every file's SHA-256 now")
    stats.add_argument("--json", action="store_true", help="print the manifest's summary as JSON")
    stats.set_defaults(handler=run_stats)

    sample = actions.add_parser("sample", help="print documents of a leaf (or eval:GROUP), decoded")
    sample.add_argument("dir", metavar="DIR")
    sample.add_argument("leaf", metavar="LEAF", help="a leaf such as code/q1, or eval:GROUP for a held-out set")
    sample.add_argument("-n", type=int, default=1, help="how many documents")
    sample.add_argument("--seed", type=int, default=0, help="which documents (random, reproducible)")
    sample.add_argument("--max-chars", type=int, default=2000, help="truncate each document (0: no limit)")
    sample.set_defaults(handler=run_sample)


def run_build(args: argparse.Namespace) -> int:
    from lagoon.config import load_config
    from lagoon.data.build import build

    overrides = list(args.overrides) + ([f"data.build.workers={args.workers}"] if args.workers is not None else [])
    config = load_config(args.config, overrides)
    out = build(config, args.out, quiet=args.quiet, repair=args.repair, say=print)
    print_summary(out)
    return 0


def _human(count: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return f"{count:.0f}"


def print_summary(directory: Path, verify: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    from lagoon.data.shards import ShardSet

    shards = ShardSet.open(directory)
    verified = shards.verify_all() if verify else None
    manifest = shards.manifest
    console = Console()
    leaves = Table(title=f"shard set {directory} (tokenizer {shards.tokenizer_hash[:19]}…, vocab {shards.vocab_size})")
    for column in ("leaf", "group", "documents", "tokens", "raw bytes", "share", "quality"):
        leaves.add_column(column, justify="left" if column in ("leaf", "group") else "right")
    total = sum(shards.leaf_tokens.values())
    for leaf, entry in manifest["leaves"].items():
        quality = entry["quality"]
        leaves.add_row(leaf, entry["group"], f"{entry['num_documents']:,}", _human(entry["num_tokens"]),
                       _human(entry["raw_bytes"]), f"{entry['num_tokens'] / total:.1%}",
                       f"{quality['min']:.2f}–{quality['max']:.2f}")
    leaves.add_row("total", "", f"{sum(e['num_documents'] for e in manifest['leaves'].values()):,}", _human(total),
                   _human(sum(e["raw_bytes"] for e in manifest["leaves"].values())), "100%", "")
    console.print(leaves)
    held = Table(title="held-out evaluation sets (never in training shards)")
    for column in ("group", "documents", "tokens", "bytes (bpb denominator)", "domains"):
        held.add_column(column)
    for group, entry in manifest["eval"].items():
        held.add_row(group, f"{entry['num_documents']:,}", _human(entry["num_tokens"]), f"{entry['num_bytes']:,}",
                     ", ".join(f"{d} {n}" for d, n in entry["domains"].items()))
    console.print(held)
    curation = Table(title="curation: documents in → kept (dropped, why)")
    curation.add_column("domain")
    stages = manifest["stats"]
    for stage in ("filter", "dedup", "heldout"):
        curation.add_column(stage)
    for domain in manifest["stats"].get("filter", {}):
        row = [domain]
        for stage in ("filter", "dedup", "heldout"):
            entry = stages.get(stage, {}).get(domain)
            if entry is None:
                row.append("")
                continue
            why = ", ".join(f"{reason} {count}" for reason, count in sorted(entry["dropped"].items(), key=lambda x: -x[1]))
            row.append(f"{entry['documents_in']} → {entry['kept']}" + (f" ({why})" if why else ""))
        curation.add_row(*row)
    console.print(curation)
    for domain, entry in stages.get("synthetic", {}).items():
        console.print(f"synthetic {domain}: {entry['produced_bytes'] / 1e6:.2f} MB of a {entry['target_bytes'] / 1e6:.2f} MB "
                      f"share target, from {entry['seeds']} seed documents")
    if verified is not None:
        console.print(verified_line(directory, verified))


def verified_line(directory, verified: dict) -> str:
    return (f"verified: {verified['files']} shard files ({_human(verified['bytes'])}B, {verified['leaves']} leaves and "
            f"{verified['eval']} held-out sets) match their SHA-256 in {Path(directory) / 'manifest.json'}, and the "
            f"tokenizer matches its hash")


def run_stats(args: argparse.Namespace) -> int:
    if args.json:
        from lagoon.data.shards import ShardSet

        shards = ShardSet.open(args.dir)
        verified = shards.verify_all() if args.verify else None
        manifest = shards.manifest
        summary = {"tokenizer": manifest["tokenizer"], "groups": manifest["groups"],
                   "leaves": {leaf: {k: v for k, v in entry.items() if k != "shards"} for leaf, entry in manifest["leaves"].items()},
                   "eval": {group: {k: v for k, v in entry.items() if k != "shards"} for group, entry in manifest["eval"].items()},
                   "stats": manifest["stats"]}
        if verified is not None:
            summary["verified"] = verified
        print(json.dumps(summary, indent=1))
        return 0
    print_summary(Path(args.dir), verify=args.verify)
    return 0


def run_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from lagoon.data.shards import ShardSet
    from lagoon.data.tokenizer import load_tokenizer

    shards = ShardSet.open(args.dir)
    stream = shards.eval_set(args.leaf[5:]).stream if args.leaf.startswith("eval:") else shards.leaf_stream(args.leaf)
    tokenizer = load_tokenizer(shards.tokenizer_dir)
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(stream.starts), size=min(args.n, len(stream.starts)), replace=False)
    for number, index in enumerate(sorted(picks.tolist())):
        ids = stream.document(index)
        text = tokenizer.decode(ids.tolist(), skip_special_tokens=False)
        if args.max_chars and len(text) > args.max_chars:
            text = text[: args.max_chars] + f"\n… ({len(text) - args.max_chars:,} more characters)"
        print(f"── {args.leaf} document {index} ({len(ids):,} tokens) " + "─" * 20)
        print(text)
    return 0
