"""Curation steps between reading and tokenizing: analyse, deduplicate, hold out, score, bucket.

`analyze` runs in worker processes (filters, quality score, dedup digest and MinHash signature per
document); the rest runs in the build process in document order, so results are deterministic.
`Stats` counts what every stage kept and dropped, and why, per domain.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lagoon.data.config import DataConfig
from lagoon.data.dedup import Deduplicator, signature, text_digest
from lagoon.data.quality import QualityClassifier, assess
from lagoon.data.sources import Document


@dataclass
class Analysis:
    """What the workers learn about one document."""

    reason: str | None
    score: float
    digest: bytes
    signature: np.ndarray | None


def analyze(documents: list[tuple[str, str]], config: DataConfig) -> list[Analysis]:
    """(text, quality profile) pairs → `Analysis` each (a worker task)."""
    results = []
    for text, profile in documents:
        reason, score = assess(text, profile, config.curation)
        digest = text_digest(text)
        values = signature(text, config.dedup) if reason is None and config.dedup.near else None
        results.append(Analysis(reason, score, digest, values))
    return results


@dataclass
class Stats:
    """Per-stage, per-domain counts of documents and bytes kept and dropped (with reasons)."""

    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    def record(self, stage: str, domain: str, text: str, reason: str | None) -> None:
        entry = self.stages.setdefault(stage, {}).setdefault(domain, {"documents_in": 0, "bytes_in": 0, "kept": 0,
                                                                      "kept_bytes": 0, "dropped": {}})
        size = len(text.encode("utf-8"))
        entry["documents_in"] += 1
        entry["bytes_in"] += size
        if reason is None:
            entry["kept"] += 1
            entry["kept_bytes"] += size
        else:
            entry["dropped"][reason] = entry["dropped"].get(reason, 0) + 1

    def totals(self, stage: str) -> dict[str, Any]:
        total = {"documents_in": 0, "kept": 0, "dropped": defaultdict(int)}
        for entry in self.stages.get(stage, {}).values():
            total["documents_in"] += entry["documents_in"]
            total["kept"] += entry["kept"]
            for reason, count in entry["dropped"].items():
                total["dropped"][reason] += count
        total["dropped"] = dict(total["dropped"])
        return total


def stable_rank(key: str, seed: int) -> int:
    """A deterministic pseudo-random rank of `key` (held-out and sampling choices)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "little")


def filter_and_dedup(documents: list[Document], analyses: list[Analysis], deduplicator: Deduplicator,
                     stats: Stats) -> tuple[list[Document], list[Analysis]]:
    """Drop filtered and duplicate documents (first of each duplicate cluster survives)."""
    kept, kept_analyses = [], []
    for document, analysis in zip(documents, analyses):
        stats.record("filter", document.domain, document.text, analysis.reason)
        if analysis.reason is not None:
            continue
        duplicate = deduplicator.offer(document.id, analysis.digest, analysis.signature)
        stats.record("dedup", document.domain, document.text, duplicate[0] if duplicate else None)
        if duplicate is None:
            kept.append(document)
            kept_analyses.append(analysis)
    return kept, kept_analyses


def hold_out(documents: list[Document], config: DataConfig, stats: Stats) -> set[str]:
    """Ids of held-out documents: per domain, `fraction` of its documents (at most `max_bytes`)."""
    by_domain: dict[str, list[Document]] = defaultdict(list)
    for document in documents:
        by_domain[document.domain].append(document)
    held: set[str] = set()
    settings = config.heldout
    for domain, docs in by_domain.items():
        if len(docs) < 2 * max(1, settings.min_documents) or settings.fraction == 0:
            continue
        wanted = max(settings.min_documents, round(len(docs) * settings.fraction))
        taken, budget = 0, settings.max_bytes
        for document in sorted(docs, key=lambda d: stable_rank(d.id, config.build.seed)):
            if taken >= wanted:
                break
            size = len(document.text.encode("utf-8"))
            if taken >= settings.min_documents and size > budget:
                continue  # too big for what is left of the budget; a smaller document may fit
            held.add(document.id)
            taken += 1
            budget -= size
    for document in documents:
        stats.record("heldout", document.domain, document.text, "held_out" if document.id in held else None)
    return held


def classifier_scores(documents: list[Document], config: DataConfig) -> np.ndarray | None:
    """Reference-likeness of every document, or None when the classifier is off or has no reference."""
    settings = config.curation.classifier
    if not settings.enabled:
        return None
    seed = config.build.seed
    reference = [d for d in documents if d.domain in settings.reference_domains]
    if len(reference) < 5:
        return None
    reference = sorted(reference, key=lambda d: stable_rank(d.id, seed))[: settings.max_examples]
    random_sample = sorted(documents, key=lambda d: stable_rank("negative:" + d.id, seed))[: settings.max_examples]
    model = QualityClassifier(settings, seed).fit([d.text for d in reference], [d.text for d in random_sample])
    return model.predict([d.text for d in documents])


def assign_buckets(documents: list[Document], scores: np.ndarray, buckets: int, seed: int) -> np.ndarray:
    """Quality bucket (1 = best … `buckets`) of each document: equal-count quantiles per domain.

    Every document lands in exactly one bucket; ties are broken by a stable hash of the id.
    """
    assignment = np.zeros(len(documents), dtype=np.int64)
    by_domain: dict[str, list[int]] = defaultdict(list)
    for index, document in enumerate(documents):
        by_domain[document.domain].append(index)
    for indices in by_domain.values():
        ordered = sorted(indices, key=lambda i: (-scores[i], stable_rank(documents[i].id, seed)))
        for bucket, part in enumerate(np.array_split(np.array(ordered, dtype=np.int64), buckets), 1):
            assignment[part] = bucket
    return assignment
