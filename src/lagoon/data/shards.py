"""Token shards on disk, the manifest that describes them, and `ShardSet`, which opens and verifies both.

Layout of a shard set directory (written by `lagoon.data.build`)::

    manifest.json                   written last, atomically: its presence means the build finished
    tokenizer/                      tokenizer.json, tokenizer_config.json, special_tokens_map.json, token_bytes.npy
    leaves/DOMAIN/qK/NNNNN.tokens   token ids, raw little-endian uint16 (uint32 for vocabularies over 65536)
    leaves/DOMAIN/qK/NNNNN.docs.npy int64 document start offsets into the .tokens file, plus its length last
    eval/GROUP/NNNNN.tokens|.docs.npy   held-out documents of each capability group (never in leaves/)
    stats.json, build_metrics.jsonl curation statistics and per-stage timings

A *leaf* is a domain × quality bucket, named ``DOMAIN/qK`` (q1 = highest quality). Every document in a
shard starts with 〈|EOS|〉 (`lagoon.tokens.EOS_ID`), and documents never straddle shard files.

manifest.json (``"format": "lagoon.shards/1"``)::

    tokenizer: {path: "tokenizer", hash: "sha256:…", vocab_size}
    token_dtype: "uint16" | "uint32"
    groups: {GROUP: [LEAF, …]}
    leaves: {LEAF: {domain, bucket, group, num_tokens, num_documents, raw_bytes, quality: {min, max, mean},
                    tokenizer_hash, shards: [SHARD, …]}}
    eval:   {GROUP: {num_tokens, num_documents, raw_bytes, num_bytes, domains: {DOMAIN: documents}, tokenizer_hash,
                     shards: [SHARD, …]}}
    SHARD = {num_tokens, num_documents, tokens: FILE, documents: FILE};  FILE = {path, bytes, sha256}
    stats, config, created

``raw_bytes`` counts the UTF-8 bytes of the documents' text; ``num_bytes`` (eval sets) is the sum of
``token_bytes`` over their tokens, the denominator of bits per byte (see `EvalSet`).

`ShardSet.open` refuses, with one line naming the file: a missing manifest (unfinished build), a
tokenizer that does not match the manifest's hash or the caller's expected hash, a missing or wrongly
sized file (always checked), and a file whose SHA-256 differs from the manifest (checked once per
process, when the file is first opened).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lagoon.errors import LagoonError

MANIFEST = "manifest.json"
FORMAT = "lagoon.shards/1"


def repair_hint(root: Path) -> str:
    """What to do about a damaged shard set, for the end of an error message."""
    return f"rebuild what fails with `lagoon data build CONFIG --out {root} --repair` (CONFIG: the one it was built from)"


# ------------------------------------------------------------------------------------------------ writing
def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, fsync it, then rename it into place."""
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w") as handle:
        json.dump(data, handle, indent=1, sort_keys=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class ShardWriter:
    """Writes one leaf (or eval set) into ``final_dir`` via ``final_dir.tmp``, renamed when finished."""

    def __init__(self, root: Path, relative_dir: str, dtype: np.dtype, shard_tokens: int):
        self.root, self.relative_dir, self.dtype, self.shard_tokens = root, relative_dir, np.dtype(dtype), shard_tokens
        self.final_dir = root / relative_dir
        self.temp_dir = self.final_dir.with_name(self.final_dir.name + ".tmp")
        if self.temp_dir.exists():
            shutil.rmtree(self.temp_dir)  # an interrupted earlier attempt
        self.temp_dir.mkdir(parents=True)
        self.shards: list[dict[str, Any]] = []
        self._handle = None
        self._digest = None
        self._starts: list[np.ndarray] = []
        self._tokens = 0

    def _open_shard(self) -> None:
        index = len(self.shards)
        self._name = f"{index:05d}"
        self._handle = (self.temp_dir / f"{self._name}.tokens").open("wb")
        self._digest = hashlib.sha256()
        self._starts, self._tokens = [], 0

    def _close_shard(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        starts = np.concatenate([*self._starts, np.array([self._tokens], dtype=np.int64)])
        documents_path = self.temp_dir / f"{self._name}.docs.npy"
        np.save(documents_path, starts)
        tokens_rel = f"{self.relative_dir}/{self._name}.tokens"
        self.shards.append({
            "num_tokens": int(self._tokens), "num_documents": int(len(starts) - 1),
            "tokens": {"path": tokens_rel, "bytes": int(self._tokens * self.dtype.itemsize),
                       "sha256": self._digest.hexdigest()},
            "documents": {"path": f"{self.relative_dir}/{self._name}.docs.npy", "bytes": documents_path.stat().st_size,
                          "sha256": file_sha256(documents_path)},
        })
        self._handle = None

    def write(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents: their concatenated ids and each one's length (documents are never split)."""
        assert ids.dtype == self.dtype and int(lengths.sum()) == len(ids)
        if len(lengths) == 0:
            return
        if self._handle is not None and self._tokens and self._tokens + len(ids) > self.shard_tokens:
            self._close_shard()
        if self._handle is None:
            self._open_shard()
        starts = self._tokens + np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int64)
        self._starts.append(starts)
        data = np.ascontiguousarray(ids).astype(self.dtype.newbyteorder("<"), copy=False).tobytes()
        self._handle.write(data)
        self._digest.update(data)
        self._tokens += len(ids)

    def finish(self) -> list[dict[str, Any]]:
        """Close the last shard and move the finished folder into place; returns the shard entries."""
        if self._handle is not None:
            self._close_shard()
        if self.final_dir.exists():
            shutil.rmtree(self.final_dir)
        os.replace(self.temp_dir, self.final_dir)
        return self.shards


# ------------------------------------------------------------------------------------------------ reading
@dataclass
class TokenStream:
    """Memory-mapped token ids of one leaf or eval set, with document boundaries, across its shard files."""

    tokens: list[np.ndarray]
    """One read-only memmap per shard file."""
    starts: np.ndarray
    """int64[D]: start of every document in the concatenated stream."""
    lengths: np.ndarray
    """int64[D]: length of every document."""
    shard_bases: np.ndarray
    """int64[S+1]: offset of each shard file in the concatenated stream."""

    @property
    def num_tokens(self) -> int:
        """Tokens of the stream's documents (a subset view may use only part of its files)."""
        return int(self.lengths.sum())

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Token ids at `positions` of the concatenated stream (any shape), as int64."""
        if len(self.tokens) == 1:
            return self.tokens[0][positions].astype(np.int64)
        out = np.empty(positions.shape, dtype=np.int64)
        shard = np.searchsorted(self.shard_bases, positions, side="right") - 1
        for index in np.unique(shard):
            where = shard == index
            out[where] = self.tokens[index][positions[where] - self.shard_bases[index]]
        return out

    def subset(self, fraction: float, key: str) -> "TokenStream":
        """A view of about `fraction` of the tokens: whole documents, picked in a stable order seeded by `key`."""
        order = np.random.default_rng([zlib.crc32(key.encode())]).permutation(len(self.starts))
        cumulative = np.cumsum(self.lengths[order])
        keep = np.sort(order[: int(np.searchsorted(cumulative, fraction * cumulative[-1])) + 1])
        return TokenStream(self.tokens, self.starts[keep], self.lengths[keep], self.shard_bases)

    def document(self, index: int) -> np.ndarray:
        start = int(self.starts[index])
        return self.gather(np.arange(start, start + int(self.lengths[index])))


class ShardSet:
    """A verified, opened shard set (see the module docstring for the layout and the checks)."""

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = root
        self.manifest = manifest
        self._verified: set[str] = set()
        self._streams: dict[str, TokenStream] = {}
        self._token_bytes: np.ndarray | None = None
        self._verify_checksums = True
        self._fraction = 1.0

    @classmethod
    def open(cls, directory: str | Path, expected_tokenizer_hash: str | None = None,
             verify_checksums: bool = True) -> "ShardSet":
        from lagoon.data.tokenizer import tokenizer_hash

        root = Path(directory)
        path = root / MANIFEST
        if not path.is_file():
            raise LagoonError(f"{root} has no {MANIFEST}: not a shard set, or its build did not finish "
                              f"(rerun `lagoon data build CONFIG --out {root}` to resume it)")
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise LagoonError(f"{path} is not valid JSON ({getattr(error, 'msg', error)}); {repair_hint(root)}") from None
        if manifest.get("format") != FORMAT:
            raise LagoonError(f"{path} has format {manifest.get('format')!r}; this lagoon reads {FORMAT!r}")
        shard_set = cls(root, manifest)
        shard_set._verify_checksums = verify_checksums
        recorded = manifest["tokenizer"]["hash"]
        tokenizer_file = shard_set.tokenizer_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise LagoonError(f"{tokenizer_file} is missing; the shard set is incomplete")
        actual = tokenizer_hash(tokenizer_file)
        if actual != recorded:
            raise LagoonError(f"{tokenizer_file} ({actual[:19]}…) is not the tokenizer the shards were made with "
                              f"({recorded[:19]}…); restore it, or {repair_hint(root)}")
        if expected_tokenizer_hash is not None and expected_tokenizer_hash != recorded:
            raise LagoonError(f"shard set {root} was tokenized with {recorded[:19]}…, not the expected tokenizer "
                              f"{expected_tokenizer_hash[:19]}…; rebuild the shards with that tokenizer")
        for kind in ("leaves", "eval"):
            for name, entry in manifest[kind].items():
                if entry.get("tokenizer_hash", recorded) != recorded:
                    raise LagoonError(f"{path}: {name} was tokenized with {entry['tokenizer_hash'][:19]}…, not the "
                                      f"shard set's tokenizer {recorded[:19]}…; rebuild it")
        for entry in shard_set._all_files():
            file = root / entry["path"]
            if not file.is_file():
                raise LagoonError(f"shard file {file} is missing; {repair_hint(root)}")
            size = file.stat().st_size
            if size != entry["bytes"]:
                raise LagoonError(f"shard file {file} is truncated or altered: {size} bytes, the manifest says "
                                  f"{entry['bytes']}; {repair_hint(root)}")
        return shard_set

    def _all_files(self) -> list[dict[str, Any]]:
        files = []
        for entry in [*self.manifest["leaves"].values(), *self.manifest["eval"].values()]:
            for shard in entry["shards"]:
                files += [shard["tokens"], shard["documents"]]
        return files

    def _check(self, entry: dict[str, Any]) -> Path:
        """Verify a file's checksum the first time this process opens it."""
        file = self.root / entry["path"]
        if self._verify_checksums and entry["path"] not in self._verified:
            if file_sha256(file) != entry["sha256"]:
                raise LagoonError(f"shard file {file} fails its SHA-256 checksum (the manifest says "
                                  f"{entry['sha256'][:12]}…); it is corrupted: {repair_hint(self.root)}")
            self._verified.add(entry["path"])
        return file

    def verify_all(self) -> dict[str, int]:
        """Check every file's checksum now; returns what was checked (files, bytes, leaves, eval sets)."""
        files = self._all_files()
        for entry in files:
            self._check(entry)
        return {"files": len(files), "bytes": sum(int(e["bytes"]) for e in files),
                "leaves": len(self.manifest["leaves"]), "eval": len(self.manifest["eval"])}

    def _stream(self, key: str, entry: dict[str, Any]) -> TokenStream:
        if key not in self._streams:
            tokens, starts, lengths, bases = [], [], [], [0]
            for shard in entry["shards"]:
                token_file = self._check(shard["tokens"])
                offsets = np.load(self._check(shard["documents"]))
                if offsets[-1] != shard["num_tokens"] or len(offsets) != shard["num_documents"] + 1:
                    raise LagoonError(f"shard file {self.root / shard['documents']['path']} disagrees with the manifest")
                tokens.append(np.memmap(token_file, dtype=np.dtype(self.manifest["token_dtype"]).newbyteorder("<"),
                                        mode="r", shape=(shard["num_tokens"],)))
                starts.append(offsets[:-1] + bases[-1])
                lengths.append(np.diff(offsets))
                bases.append(bases[-1] + shard["num_tokens"])
            self._streams[key] = TokenStream(tokens, np.concatenate(starts).astype(np.int64),
                                             np.concatenate(lengths).astype(np.int64), np.array(bases, dtype=np.int64))
        return self._streams[key]

    # -------------------------------------------------------------------------------------------- queries
    @property
    def leaves(self) -> list[str]:
        return list(self.manifest["leaves"])

    @property
    def groups(self) -> dict[str, list[str]]:
        return {group: list(leaves) for group, leaves in self.manifest["groups"].items()}

    @property
    def leaf_tokens(self) -> dict[str, int]:
        if self._fraction < 1.0:
            return {leaf: self.leaf_stream(leaf).num_tokens for leaf in self.manifest["leaves"]}
        return {leaf: entry["num_tokens"] for leaf, entry in self.manifest["leaves"].items()}

    def subset(self, fraction: float) -> "ShardSet":
        """A view whose every leaf holds about `fraction` of its tokens (whole documents, a stable choice).

        The AutoMixer trains proxies on a fraction of the data so that their epochs per leaf match the
        full run's. Held-out sets are unchanged. ``fraction >= 1`` returns this shard set.
        """
        if fraction >= 1.0:
            return self
        if fraction <= 0.0:
            raise LagoonError(f"a shard subset needs a fraction in (0, 1], got {fraction}")
        view = ShardSet(self.root, self.manifest)
        view._verified, view._verify_checksums, view._fraction = self._verified, self._verify_checksums, fraction
        view._token_bytes = self._token_bytes
        return view

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / self.manifest["tokenizer"]["path"]

    @property
    def tokenizer_hash(self) -> str:
        return self.manifest["tokenizer"]["hash"]

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["tokenizer"]["vocab_size"])

    @property
    def token_bytes(self) -> np.ndarray:
        """int32[V]: UTF-8 bytes each token id decodes to (0 for special tokens; `lagoon.data.tokenizer`)."""
        if self._token_bytes is None:
            self._token_bytes = np.load(self.tokenizer_dir / "token_bytes.npy")
        return self._token_bytes

    def leaf_info(self, leaf: str) -> dict[str, Any]:
        if leaf not in self.manifest["leaves"]:
            raise LagoonError(f"unknown leaf {leaf!r}; this shard set has {', '.join(self.leaves)}")
        return self.manifest["leaves"][leaf]

    def leaf_stream(self, leaf: str) -> TokenStream:
        """The memory-mapped tokens of a leaf (checksums verified on first use)."""
        stream = self._stream(f"leaf:{leaf}", self.leaf_info(leaf))
        if self._fraction < 1.0:
            key = f"subset:{leaf}:{self._fraction}"
            if key not in self._streams:
                self._streams[key] = stream.subset(self._fraction, leaf)
            stream = self._streams[key]
        return stream

    def natural_mixture(self):
        """The mixture that reads every leaf in proportion to its tokens (after curation and dedup)."""
        from lagoon.data.mixture import Mixture

        total = sum(self.leaf_tokens.values())
        return Mixture({leaf: tokens / total for leaf, tokens in self.leaf_tokens.items()})

    def eval_set(self, group: str) -> "EvalSet":
        """The held-out documents of a capability group."""
        from lagoon.data.evalset import EvalSet

        if group not in self.manifest["eval"]:
            raise LagoonError(f"no held-out set for group {group!r}; this shard set has {', '.join(self.manifest['eval'])}")
        entry = self.manifest["eval"][group]
        return EvalSet(group, self._stream(f"eval:{group}", entry), entry["raw_bytes"], entry["num_bytes"])

    @property
    def eval_groups(self) -> list[str]:
        return list(self.manifest["eval"])
