"""``lagoon data build``: sources → curation → tokenizer → shards per leaf + held-out sets + manifest.

`build(config, out_dir)` runs the stages below on a pool of worker processes (``data.build.workers``,
default one per core) and returns ``out_dir``. Each stage leaves a finished artefact that a rerun reuses,
so an interrupted build resumes where it stopped; the manifest is written last and atomically, so a
directory without ``manifest.json`` is never mistaken for a finished shard set, and rerunning on a
finished directory is a no-op (or a one-line error if the config differs).

1. read      every source in parallel (`lagoon.data.sources`, `lagoon.data.embedded`)
2. analyse   hard filters, quality score, exact digest, MinHash signature (workers; `lagoon.data.curate`)
3. dedup     exact then MinHash-LSH near duplicates, first of each cluster kept
4. hold out  per domain, for the capability groups' evaluation sets (before synthesis, so no synthetic
             document is made from a held-out one)
5. synthesise each generator up to its share, then analyse + dedup + hold out its output too
6. bucket    optional classifier blend, then equal-count quality quantiles per domain: the leaves
             → ``.build/curated.parquet`` + ``.build/curation.json``
7. tokenizer byte-level BPE on a sample spread evenly over domains → ``tokenizer/``
8. shards    every leaf and every group's held-out set, tokenized in parallel → ``leaves/``, ``eval/``
9. manifest  ``manifest.json`` (see `lagoon.data.shards`), ``stats.json``, ``build_metrics.jsonl``
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from lagoon.configio import to_dict
from lagoon.data.config import DataConfig
from lagoon.data.curate import (Stats, assign_buckets, classifier_scores, filter_and_dedup, hold_out,
                                stable_rank)
from lagoon.data.dedup import Deduplicator
from lagoon.data.shards import FORMAT, MANIFEST, ShardWriter, write_json_atomic
from lagoon.data.sources import Document
from lagoon.data.workers import (Progress, analyze_task, chunks, exercise_task, ordered, read_task, tokenize_task,
                                 worker_pool)
from lagoon.errors import LagoonError

QUICK_SCALE = 0.05
LOADING_KEYS = ("shards", "mixture", "weights", "seq_len", "global_batch_size", "repetition_cap", "seed")


# ------------------------------------------------------------------------------------------- helpers
def _data_config(config) -> DataConfig:
    return config.data if hasattr(config, "data") else config


def build_fingerprint(config: DataConfig) -> str:
    """Hash of everything that shapes the shards (not the loading keys, not the worker count)."""
    data = to_dict(config)
    for key in LOADING_KEYS:
        data.pop(key, None)
    data["build"].pop("workers", None)
    data["sources"] = to_dict(config.effective_sources())
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def embedded_config(quick: bool = False, **overrides: Any) -> DataConfig:
    """The embedded default `DataConfig` (``quick``: the seconds-long variant for tests)."""
    from lagoon.configio import from_dict

    return from_dict(DataConfig, {"build": {"quick": quick}, **overrides}, "data")


# ------------------------------------------------------------------------------------------- stages
def _analyze_all(documents: list[Document], config: DataConfig, pool, workers: int, advance) -> list:
    jobs = [([(d.text, config.domains[d.domain].quality) for d in chunk], config) for chunk in chunks(documents)]
    results = []
    for part in ordered(pool, analyze_task, jobs, 2 * workers):
        results += part
        advance(len(part))
    return results


def _synthesize(train: list[Document], config: DataConfig, pool, workers: int, state_dir: Path,
                progress: Progress) -> tuple[list[Document], dict[str, dict[str, int]]]:
    """Each generator's documents, up to its share of the corpus; and target vs produced bytes per domain."""
    from lagoon.data.synthetic import REPHRASE_FORMATS, rephrase_prompt, template_rephrase

    generators = config.synthetic.generators if config.synthetic.enabled else []
    natural_bytes = sum(len(d.text.encode("utf-8")) for d in train)
    total_share = sum(g.share for g in generators)
    made: list[Document] = []
    report: dict[str, dict[str, int]] = {}
    for index, generator in enumerate(generators):
        budget = natural_bytes * generator.share / (1.0 - total_share)
        seeds = sorted((d for d in train if d.domain in generator.seed_domains),
                       key=lambda d: stable_rank(f"{index}:{d.id}", config.build.seed))
        advance = progress.task(f"synthetic {generator.domain}", int(budget))
        produced = 0

        def take(document: Document) -> bool:
            nonlocal produced
            if produced >= budget:
                return False
            size = len(document.text.encode("utf-8"))
            made.append(document)
            produced += size
            advance(size)
            return True

        if generator.kind == "code_exercises":
            jobs = ((seeds[i:i + 16], generator.domain) for i in range(0, len(seeds), 16))
            for documents in ordered(pool, exercise_task, jobs, 2 * workers):
                if not all(take(d) for d in documents):
                    break
        else:
            styles = {seed.id: REPHRASE_FORMATS[stable_rank(seed.id, index) % len(REPHRASE_FORMATS)] for seed in seeds}

            def rephrased(seed: Document, text: str | None, style: str) -> Document | None:
                if not text:
                    return None
                return Document(id=f"{generator.domain}:{seed.id}:{style}", text=text,
                                source=f"synthetic:rephrase:{generator.backend}", domain=generator.domain,
                                metadata={"seed": seed.id, "style": style})

            if generator.backend == "template":
                # Up to one rewrite per format and seed, one format per pass, until the share is met.
                for turn in range(len(REPHRASE_FORMATS)):
                    for seed in seeds:
                        style = REPHRASE_FORMATS[(REPHRASE_FORMATS.index(styles[seed.id]) + turn) % len(REPHRASE_FORMATS)]
                        text = template_rephrase(seed, style, random.Random(f"{index}:{turn}:{seed.id}"))
                        document = rephrased(seed, text, style)
                        if document is not None and not take(document):
                            break
                    if produced >= budget:
                        break
            else:
                from lagoon.data.endpoint import RephraseClient

                client = RephraseClient(generator, state_dir / f"rephrase_{index}.jsonl")
                try:
                    wave = max(4, 2 * generator.concurrency)
                    for start in range(0, len(seeds), wave):
                        batch = seeds[start:start + wave]
                        answers = client.rephrase_all([(seed.id, rephrase_prompt(seed, styles[seed.id])) for seed in batch])
                        documents = [rephrased(seed, answers[seed.id], styles[seed.id]) for seed in batch]
                        if not all(take(d) for d in documents if d is not None):
                            break
                        if produced >= budget:
                            break
                finally:
                    client.close()
        advance.finish()   # a budget in bytes is overshot by the last document, or undershot when seeds run out
        report[generator.domain] = {"target_bytes": int(budget), "produced_bytes": int(produced), "seeds": len(seeds)}
    return made, report


def _curate(config: DataConfig, scale: float, pool, workers: int, state_dir: Path, progress: Progress,
            metrics: list[dict]) -> tuple[list[Document], dict[str, Any]]:
    stats = Stats()
    sources = config.effective_sources()
    started = time.perf_counter()
    advance = progress.task("read sources", len(sources))
    documents: list[Document] = []
    for source, part in zip(sources, ordered(pool, read_task, [(s, scale) for s in sources], len(sources))):
        for document in part:
            if document.domain not in config.domains:
                raise LagoonError(f"source {source.label!r} gives document {document.id!r} the domain "
                                  f"{document.domain!r}, which [data.domains] does not define")
        documents += part
        advance()
    metrics.append({"stage": "read", "seconds": time.perf_counter() - started, "documents": len(documents)})

    started = time.perf_counter()
    deduplicator = Deduplicator(config.dedup)
    analyses = _analyze_all(documents, config, pool, workers, progress.task("filter + minhash", len(documents)))
    kept, kept_analyses = filter_and_dedup(documents, analyses, deduplicator, stats)
    scores = {d.id: a.score for d, a in zip(kept, kept_analyses)}
    held = hold_out(kept, config, stats)
    metrics.append({"stage": "filter_dedup", "seconds": time.perf_counter() - started, "kept": len(kept)})

    started = time.perf_counter()
    train = [d for d in kept if d.id not in held]
    synthetic, synthetic_report = _synthesize(train, config, pool, workers, state_dir, progress)
    stats.stages["synthetic"] = synthetic_report
    if synthetic:
        synthetic_analyses = _analyze_all(synthetic, config, pool, workers, progress.task("filter synthetic", len(synthetic)))
        synthetic, synthetic_analyses = filter_and_dedup(synthetic, synthetic_analyses, deduplicator, stats)
        scores.update({d.id: a.score for d, a in zip(synthetic, synthetic_analyses)})
        held |= hold_out(synthetic, config, stats)
        kept += synthetic
    metrics.append({"stage": "synthetic", "seconds": time.perf_counter() - started, "documents": len(synthetic)})

    started = time.perf_counter()
    train = [d for d in kept if d.id not in held]
    heuristic = np.array([scores[d.id] for d in train])
    learned = classifier_scores(train, config)
    weight = config.curation.classifier.weight
    final = heuristic if learned is None else (1 - weight) * heuristic + weight * learned
    buckets = assign_buckets(train, final, config.curation.buckets, config.build.seed)
    score_of = {d.id: float(s) for d, s in zip(train, final)}
    bucket_of = {d.id: int(b) for d, b in zip(train, buckets)}
    for document in kept:
        bucket = bucket_of.get(document.id, 0)
        stats.record("bucket", document.domain, document.text, None if bucket else "held_out")
    metrics.append({"stage": "bucket", "seconds": time.perf_counter() - started, "train": len(train), "held_out": len(held)})
    for document in kept:
        document.metadata = {"split": "eval" if document.id in held else "train", "bucket": bucket_of.get(document.id, 0),
                             "score": score_of.get(document.id, scores[document.id])}
    return kept, stats.stages


def _save_curated(documents: list[Document], stages: dict, state_dir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "id": [d.id for d in documents], "text": [d.text for d in documents], "source": [d.source for d in documents],
        "domain": [d.domain for d in documents], "split": [d.metadata["split"] for d in documents],
        "bucket": [d.metadata["bucket"] for d in documents], "score": [d.metadata["score"] for d in documents],
    })
    temporary = state_dir / ".curated.parquet.tmp"
    pq.write_table(table, temporary, compression="zstd")
    os.replace(temporary, state_dir / "curated.parquet")
    write_json_atomic(state_dir / "curation.json", {"stages": stages})


def _load_curated(state_dir: Path) -> tuple[list[Document], dict]:
    import pyarrow.parquet as pq

    table = pq.read_table(state_dir / "curated.parquet").to_pydict()
    documents = [Document(id=i, text=t, source=s, domain=d, metadata={"split": sp, "bucket": b, "score": sc})
                 for i, t, s, d, sp, b, sc in zip(table["id"], table["text"], table["source"], table["domain"],
                                                   table["split"], table["bucket"], table["score"])]
    return documents, json.loads((state_dir / "curation.json").read_text())["stages"]


def _train_tokenizer(train: list[Document], config: DataConfig, scale: float, out: Path) -> None:
    from lagoon.data.tokenizer import save_tokenizer, train_tokenizer

    final = out / "tokenizer"
    if (final / "token_bytes.npy").is_file():
        return
    by_domain: dict[str, list[Document]] = defaultdict(list)
    for document in train:
        by_domain[document.domain].append(document)
    quota = config.tokenizer.sample_bytes / max(1, len(by_domain))
    sample = []
    for domain in sorted(by_domain):
        used = 0
        for document in sorted(by_domain[domain], key=lambda d: stable_rank("tokenizer:" + d.id, config.build.seed)):
            if used >= quota:
                break
            text = document.text[:50_000]
            sample.append(text)
            used += len(text)
    tokenizer = train_tokenizer(sample, config.tokenizer.vocab_size, config.tokenizer.min_frequency)
    temporary = out / "tokenizer.tmp"
    if temporary.exists():
        shutil.rmtree(temporary)
    save_tokenizer(tokenizer, temporary)
    os.replace(temporary, final)


def _write_streams(groups: dict[str, list[Document]], kind: str, out: Path, pool, workers: int, dtype: np.dtype,
                   config: DataConfig, token_bytes: np.ndarray, progress: Progress) -> dict[str, dict[str, Any]]:
    """Tokenize each named group of documents into ``out/kind/NAME/`` (skipping finished ones)."""
    entries: dict[str, dict[str, Any]] = {}
    todo = {}
    for name, documents in groups.items():
        done = out / kind / name / "entry.json"
        if done.is_file():
            entries[name] = json.loads(done.read_text())
        else:
            todo[name] = documents
    total_bytes = sum(len(d.text) for docs in todo.values() for d in docs)
    advance = progress.task(f"tokenize {kind}", total_bytes)
    tokenizer_path = str(out / "tokenizer" / "tokenizer.json")
    jobs = [(name, chunk) for name, documents in todo.items() for chunk in chunks(documents)]
    results = ordered(pool, tokenize_task, ((tokenizer_path, [d.text for d in chunk], dtype.str) for _, chunk in jobs),
                       2 * workers)
    writers: dict[str, ShardWriter] = {}
    sizes: dict[str, dict[str, int]] = defaultdict(lambda: {"raw_bytes": 0, "num_bytes": 0})
    remaining = defaultdict(int)
    for name, _ in jobs:
        remaining[name] += 1
    for (name, chunk), (ids, lengths) in zip(jobs, results):
        if name not in writers:
            writers[name] = ShardWriter(out, f"{kind}/{name}", dtype, config.build.shard_tokens)
        writers[name].write(ids, lengths)
        sizes[name]["raw_bytes"] += sum(len(d.text.encode("utf-8")) for d in chunk)
        sizes[name]["num_bytes"] += int(token_bytes[ids].sum())
        advance(sum(len(d.text) for d in chunk))
        remaining[name] -= 1
        if remaining[name] == 0:
            documents = todo[name]
            entry = {"num_tokens": 0, "num_documents": len(documents), **sizes[name]}
            shards = writers.pop(name).finish()
            entry["num_tokens"] = sum(s["num_tokens"] for s in shards)
            entry["shards"] = shards
            write_json_atomic(out / kind / name / "entry.json", entry)
            entries[name] = entry
    return entries


def build(config, out_dir: str | Path, quiet: bool = False, repair: bool = False,
          say=lambda message: None) -> Path:
    """Build a shard set from a `DataConfig` (or a root config with a ``data`` section); see the module doc.
    `repair`: first remove what fails verification so that it is rebuilt (`lagoon.data.repair`)."""
    from lagoon.data.repair import prepare_repair, read_manifest

    config = _data_config(config)
    out = Path(out_dir)
    fingerprint = build_fingerprint(config)
    if repair and out.is_dir():
        removed = prepare_repair(out, fingerprint)
        say(f"repair: rebuilding {len(removed)} part(s): " + "; ".join(removed) if removed else
            "repair: every file matches its checksum" + ("" if (out / MANIFEST).is_file() else "; writing the manifest"))
    manifest = read_manifest(out)
    if manifest is not None:
        if manifest.get("build_fingerprint") == fingerprint:
            return out
        raise LagoonError(f"{out} already holds a shard set built from a different data config; "
                          "choose another --out or delete it")
    state_dir = out / ".build"
    state_dir.mkdir(parents=True, exist_ok=True)
    stamp = state_dir / "fingerprint"
    if stamp.is_file() and stamp.read_text().strip() != fingerprint:
        raise LagoonError(f"{out} holds an unfinished build of a different data config; delete it or rerun "
                          "with the same config to resume")
    stamp.write_text(fingerprint + "\n")
    scale = QUICK_SCALE if config.build.quick else 1.0
    workers = config.build.workers or min(8, os.cpu_count() or 1)
    metrics: list[dict] = []
    begun = time.perf_counter()
    with Progress(quiet) as progress, worker_pool(workers) as pool:
        if (state_dir / "curation.json").is_file():
            documents, stages = _load_curated(state_dir)
            metrics.append({"stage": "curate", "resumed": True})
        else:
            documents, stages = _curate(config, scale, pool, workers, state_dir, progress, metrics)
            _save_curated(documents, stages, state_dir)
        train = [d for d in documents if d.metadata["split"] == "train"]
        if not train:
            raise LagoonError("no documents survived curation; check the sources and [data.curation]")

        started = time.perf_counter()
        _train_tokenizer(train, config, scale, out)
        metrics.append({"stage": "tokenizer", "seconds": time.perf_counter() - started})

        from lagoon.data.tokenizer import load_tokenizer, token_dtype, tokenizer_hash

        tokenizer = load_tokenizer(out / "tokenizer")
        dtype = token_dtype(tokenizer.get_vocab_size())
        token_bytes = np.load(out / "tokenizer" / "token_bytes.npy")
        started = time.perf_counter()
        leaves: dict[str, list[Document]] = defaultdict(list)
        for document in train:
            leaves[f"{document.domain}/q{document.metadata['bucket']}"].append(document)
        leaves = dict(sorted(leaves.items()))
        held: dict[str, list[Document]] = defaultdict(list)
        for document in documents:
            if document.metadata["split"] == "eval":
                held[config.domains[document.domain].group].append(document)
        leaf_entries = _write_streams(leaves, "leaves", out, pool, workers, dtype, config, token_bytes, progress)
        eval_entries = _write_streams(dict(sorted(held.items())), "eval", out, pool, workers, dtype, config,
                                      token_bytes, progress)
        metrics.append({"stage": "shards", "seconds": time.perf_counter() - started,
                        "tokens": sum(e["num_tokens"] for e in leaf_entries.values())})

    hash_of_tokenizer = tokenizer_hash(out / "tokenizer")
    groups: dict[str, list[str]] = defaultdict(list)
    for leaf, documents_of_leaf in leaves.items():
        domain, bucket = leaf.split("/")
        scores = [d.metadata["score"] for d in documents_of_leaf]
        leaf_entries[leaf] = {"domain": domain, "bucket": int(bucket[1:]), "group": config.domains[domain].group,
                              "quality": {"min": min(scores), "max": max(scores), "mean": float(np.mean(scores))},
                              "tokenizer_hash": hash_of_tokenizer, **leaf_entries[leaf]}
        groups[config.domains[domain].group].append(leaf)
    for group, documents_of_group in held.items():
        domains = defaultdict(int)
        for document in documents_of_group:
            domains[document.domain] += 1
        eval_entries[group] = {"domains": dict(domains), "tokenizer_hash": hash_of_tokenizer, **eval_entries[group]}
    metrics.append({"stage": "total", "seconds": time.perf_counter() - begun})
    manifest = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_fingerprint": fingerprint,
        "tokenizer": {"path": "tokenizer", "hash": hash_of_tokenizer,
                      "vocab_size": tokenizer.get_vocab_size()},
        "token_dtype": dtype.name,
        "groups": dict(sorted(groups.items())),
        "leaves": leaf_entries,
        "eval": eval_entries,
        "stats": stages,
        "config": to_dict(config),
    }
    write_json_atomic(out / "stats.json", {"stages": stages, "metrics": metrics})
    with (out / "build_metrics.jsonl").open("a") as handle:
        for line in metrics:
            handle.write(json.dumps(line) + "\n")
    write_json_atomic(out / MANIFEST, manifest)
    shutil.rmtree(state_dir, ignore_errors=True)
    return out
