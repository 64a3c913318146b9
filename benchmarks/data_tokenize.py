"""Claim: lagoon's tokenize-and-shard stage keeps at least 0.8× the throughput of a plain tokenizer + writer.

Both sides turn the same documents (the embedded corpus' curated text) into the same token file with the
same trained tokenizer, in the same run, interleaved round by round (the order alternating), after a
warm-up of each:

- baseline — what one would write without lagoon: ``tokenizers``' ``encode_batch_fast`` over all the
  texts (Rust, Rayon threads on every core), each document's ids led by 〈|EOS|〉 and concatenated with
  NumPy, written with ``ndarray.tofile`` plus the document starts with ``np.save``;
- lagoon — the build's shard stage (`lagoon.data.build._write_streams`): worker processes tokenize 1 MB
  chunks, the parent writes shard files with SHA-256 checksums, fsync, document starts, byte counts for
  bits-per-byte and the leaf's entry.json, i.e. everything ``lagoon data build`` does to tokenize a leaf.

The two token files are checked to be identical. Reported: MB of text per second (wall), the ratio per
round (lagoon ÷ baseline, median and range), and CPU-seconds per million tokens of each side (this
process's CPU time, plus the worker processes' for lagoon), which does not depend on how busy the
machine is.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from benchmarks.common import median, ratios, record, spread, table_row
from benchmarks.infer_common import process_cpu_seconds

GOAL = 0.8


def plain_writer(tokenizer, texts: list[str], dtype: np.dtype, out: Path, eos_id: int) -> None:
    """The baseline: tokenizers + NumPy, no lagoon code."""
    encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    pieces = []
    for encoding in encodings:
        pieces.append(np.array([eos_id], dtype=dtype))
        pieces.append(np.asarray(encoding.ids, dtype=dtype))
    ids = np.concatenate(pieces)
    lengths = np.fromiter((len(e.ids) + 1 for e in encodings), dtype=np.int64, count=len(encodings))
    out.mkdir(parents=True, exist_ok=True)
    ids.tofile(out / "tokens.bin")
    np.save(out / "starts.npy", np.concatenate([[0], np.cumsum(lengths)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shards", default="", help="a built shard set to take the tokenizer from (default: quick build)")
    parser.add_argument("--megabytes", type=float, default=4.0, help="text to tokenize per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from concurrent.futures import ProcessPoolExecutor

    from lagoon.data.build import _write_streams, build, embedded_config
    from lagoon.data.config import SourceConfig
    from lagoon.data.sources import read_source
    from lagoon.data.tokenizer import load_tokenizer, token_dtype
    from lagoon.data.workers import Progress, worker_init
    from lagoon.tokens import EOS_ID

    with tempfile.TemporaryDirectory() as scratch:
        shards = Path(args.shards) if args.shards else build(embedded_config(quick=True), Path(scratch) / "q", quiet=True)
        tokenizer = load_tokenizer(shards / "tokenizer")
        documents = []
        for name, domain in (("stdlib_code", "code"), ("stdlib_docs", "docs"), ("math", "math"), ("tool_use", "tool_use")):
            documents += read_source(SourceConfig(kind="embedded", embedded=name, domain=domain, max_documents=2000))
        documents.sort(key=lambda d: d.id)
        documents = documents[::2] + documents[1::2]  # a fixed mix of the four sources
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
        work.mkdir(parents=True)
        shutil.copytree(shards / "tokenizer", work / "tokenizer")
        config = embedded_config()
        wall = {"baseline": [], "lagoon": []}
        cpu = {"baseline": [], "lagoon": []}
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=worker_init) as pool, \
                Progress(quiet=True) as progress:

            def workers_cpu() -> float:
                return sum(process_cpu_seconds(p.pid) for p in pool._processes.values())

            def run_lagoon(tag: str) -> None:
                shutil.rmtree(work / "leaves", ignore_errors=True)
                _write_streams({tag: picked}, "leaves", work, pool, args.workers, dtype, config, token_bytes, progress)

            def run_baseline(tag: str) -> None:
                plain_writer(tokenizer, texts, dtype, work / "plain" / tag, EOS_ID)

            run_lagoon("warm")  # starts the workers and loads the tokenizer in each
            run_baseline("warm")
            for round_index in range(args.rounds):
                order = ("baseline", "lagoon") if round_index % 2 == 0 else ("lagoon", "baseline")
                for side in order:
                    started, cpu_started, workers_started = time.perf_counter(), time.process_time(), workers_cpu()
                    (run_lagoon if side == "lagoon" else run_baseline)(f"r{round_index}")
                    wall[side].append(time.perf_counter() - started)
                    cpu[side].append(time.process_time() - cpu_started + (workers_cpu() - workers_started
                                                                          if side == "lagoon" else 0.0))
            ours = np.concatenate([np.fromfile(path, dtype=dtype)
                                   for path in sorted((work / "leaves" / f"r{args.rounds - 1}").glob("*.tokens"))])
            theirs = np.fromfile(work / "plain" / f"r{args.rounds - 1}" / "tokens.bin", dtype=dtype)
            assert np.array_equal(ours, theirs), "lagoon's shards and the plain writer's file hold different tokens"
            tokens = len(theirs)
    per_round = ratios(wall["baseline"], wall["lagoon"])  # lagoon rate ÷ baseline rate
    rate = {side: [megabytes / s for s in values] for side, values in wall.items()}
    cpu_per_million = {side: [s / tokens * 1e6 for s in values] for side, values in cpu.items()}
    lines = [f"{megabytes:.1f} MB of embedded-corpus text ({len(texts)} documents, {tokens:,} tokens), lagoon with "
             f"{args.workers} worker processes; {args.rounds} interleaved rounds; both outputs hold the same tokens "
             "(asserted).", "",
             "| side | MB/s (wall) | CPU-s per million tokens |", "|---|---|---|",
             f"| baseline: tokenizers encode_batch_fast + NumPy writer | {spread(rate['baseline'])} | "
             f"{spread(cpu_per_million['baseline'])} |",
             f"| lagoon shard stage (`_write_streams`) | {spread(rate['lagoon'])} | "
             f"{spread(cpu_per_million['lagoon'])} |",
             f"| lagoon ÷ baseline, per round | {spread(per_round, '{:.2f}', '×')} | |", "",
             "Values are median (min–max) over rounds.", "",
             table_row("data_tokenize", f"≥ {GOAL}×",
                       f"{spread(per_round, '{:.2f}', '×')} wall; CPU-s per M tokens lagoon "
                       f"{median(cpu_per_million['lagoon']):.2f}, baseline {median(cpu_per_million['baseline']):.2f}",
                       "met" if median(per_round) >= GOAL else "missed")]
    print("\n".join(lines))
    if not args.no_record:
        record("Data: tokenize-and-shard stage vs a plain tokenizers + NumPy writer (issue 21)", lines)


if __name__ == "__main__":
    main()
