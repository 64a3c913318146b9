"""Exact and near-duplicate removal.

Exact: the BLAKE2b digest of the text lower-cased with whitespace collapsed; the first document with a
digest is kept. Near: MinHash signatures of word 5-gram shingles (Broder 1997), indexed with datasketch's
MinHash LSH; a document is a near duplicate when an earlier one is an LSH candidate *and* their estimated
Jaccard similarity reaches the threshold (the check removes LSH false positives). Signatures are
computed in worker processes (`signature`), the index is filled in one process in document order
(`Deduplicator`), so the result is deterministic: the first of each duplicate cluster survives.
"""

from __future__ import annotations

import functools
import hashlib
import zlib

import numpy as np

from lagoon.data.config import DedupConfig


def text_digest(text: str) -> bytes:
    """Digest of the case- and whitespace-normalised text (equal for exact duplicates)."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode("utf-8"), digest_size=16).digest()


def shingles(text: str, words_per_shingle: int) -> list[bytes]:
    """Distinct lower-cased word n-grams of `text` (the whole text when it is shorter than n words)."""
    words = text.lower().split()
    if len(words) <= words_per_shingle:
        return [" ".join(words).encode("utf-8")]
    return list({" ".join(words[i:i + words_per_shingle]).encode("utf-8")
                 for i in range(len(words) - words_per_shingle + 1)})


@functools.cache
def _permutations(num_perm: int, seed: int) -> np.ndarray:
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed).permutations


def signature(text: str, config: DedupConfig) -> np.ndarray:
    """MinHash signature (uint32[num_perm]) of the text's shingles.

    CRC-32 hashes each shingle: datasketch's affine32 scheme mixes every input hash with the MurmurHash3
    finaliser before permuting, so a fast 32-bit hash suffices and avoids a Python-level SHA-1 per shingle.
    """
    from datasketch import MinHash

    minhash = MinHash(num_perm=config.num_perm, seed=config.seed, hashfunc=zlib.crc32,
                      permutations=_permutations(config.num_perm, config.seed), scheme="affine32")
    minhash.update_batch(shingles(text, config.shingle_words))
    return minhash.hashvalues.copy()


class Deduplicator:
    """Keeps the first of each exact or near-duplicate cluster, in the order documents are offered."""

    def __init__(self, config: DedupConfig):
        from datasketch import MinHashLSH

        self.config = config
        self.lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
        self.digests: dict[bytes, str] = {}
        self.signatures: dict[str, np.ndarray] = {}

    def _minhash(self, values: np.ndarray):
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.config.seed, hashvalues=values, scheme="affine32")

    def offer(self, key: str, digest: bytes, values: np.ndarray) -> tuple[str, str] | None:
        """None if `key` is kept, else (reason, key of the document it duplicates)."""
        if self.config.exact:
            if digest in self.digests:
                return "exact_duplicate", self.digests[digest]
            self.digests[digest] = key
        if self.config.near:
            minhash = self._minhash(values)
            for candidate in sorted(self.lsh.query(minhash)):
                # Estimated Jaccard similarity: the share of equal signature entries.
                if float(np.mean(self.signatures[candidate] == values)) >= self.config.threshold:
                    return "near_duplicate", candidate
            self.lsh.insert(key, minhash, check_duplication=False)
            self.signatures[key] = values
        return None
