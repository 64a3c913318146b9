"""Claim: lagoon's tokenize stage keeps at least 0.8× the throughput of calling HF tokenizers directly.

Both sides tokenize the same documents (the embedded corpus' curated text) with the same trained
tokenizer, in the same run, round-robin:

- baseline: ``tokenizer.encode_batch_fast(texts)`` — Rust, every core (Rayon), ids left in Rust objects;
- in-process: `lagoon.data.tokenizer.encode_documents` — the same call plus the EOS-led flat numpy array;
- pipeline: the build's shard stage (`lagoon.data.build._write_streams`): worker processes tokenize 1 MB
  chunks and the parent writes checksummed shard files, i.e. everything ``lagoon data build`` does.

Reported as MB of text per second and as a ratio to the baseline.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from benchmarks.common import median, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", default="", help="a built shard set to take the tokenizer from (default: quick build)")
    parser.add_argument("--megabytes", type=float, default=8.0, help="text to tokenize per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from concurrent.futures import ProcessPoolExecutor

    from lagoon.data.build import _write_streams, build, embedded_config
    from lagoon.data.config import SourceConfig
    from lagoon.data.sources import read_source
    from lagoon.data.tokenizer import encode_documents, load_tokenizer, token_dtype
    from lagoon.data.workers import Progress, worker_init

    with tempfile.TemporaryDirectory() as scratch:
        shards = Path(args.shards) if args.shards else build(embedded_config(quick=True), Path(scratch) / "q", quiet=True)
        tokenizer = load_tokenizer(shards / "tokenizer")
        documents = []
        for name, domain in (("stdlib_code", "code"), ("stdlib_docs", "docs"), ("math", "math"), ("tool_use", "tool_use")):
            documents += read_source(SourceConfig(kind="embedded", embedded=name, domain=domain, max_documents=2000))
        documents.sort(key=lambda d: hash(d.id) % 1000)
        picked, size = [], 0
        for document in documents:
            if size >= args.megabytes * 1e6:
                break
            picked.append(document)
            size += len(document.text.encode())
        texts = [d.text for d in picked]
        megabytes = size / 1e6
        dtype = token_dtype(tokenizer.get_vocab_size())
        token_bytes = np.load(shards / "tokenizer" / "token_bytes.npy")
        work = Path(scratch) / "out"
        (work / "tokenizer").parent.mkdir(parents=True, exist_ok=True)
        import shutil

        shutil.copytree(shards / "tokenizer", work / "tokenizer")
        config = embedded_config()
        times = {"HF encode_batch_fast": [], "lagoon encode_documents": [], "lagoon shard stage": []}
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=worker_init) as pool, \
                Progress(quiet=True) as progress:
            _write_streams({"warmup": picked[:50]}, "warm", work, pool, args.workers, dtype, config, token_bytes, progress)
            for round_index in range(args.rounds):
                started = time.perf_counter()
                encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
                times["HF encode_batch_fast"].append(time.perf_counter() - started)
                tokens = sum(len(e.ids) for e in encodings)
                started = time.perf_counter()
                encode_documents(tokenizer, texts, dtype)
                times["lagoon encode_documents"].append(time.perf_counter() - started)
                started = time.perf_counter()
                _write_streams({f"round{round_index}": picked}, "leaves", work, pool, args.workers, dtype, config,
                               token_bytes, progress)
                times["lagoon shard stage"].append(time.perf_counter() - started)
    baseline = megabytes / median(times["HF encode_batch_fast"])
    lines = [f"{megabytes:.1f} MB of embedded-corpus text ({len(texts)} documents, {tokens:,} tokens), "
             f"{args.workers} worker processes, median of {args.rounds} rounds.", "",
             "| path | MB/s | ratio to HF |", "|---|---|---|"]
    for name, values in times.items():
        rate = megabytes / median(values)
        lines.append(f"| {name} | {rate:.2f} | {rate / baseline:.2f}× |")
    print("\n".join(lines))
    if not args.no_record:
        record("Data: tokenization throughput, pipeline vs HF tokenizers (issue: data pipeline)", lines)


if __name__ == "__main__":
    main()
