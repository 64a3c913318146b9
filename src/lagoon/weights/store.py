"""The weight store of an RL run: one Hugging Face Laguna directory per published version, written as the
tensors stream by.

    RUN_DIR/weights/v_NNNNNNNN/   config.json, lagoon_model.json, tokenizer files, and the weights: one
                                  ``model.safetensors``, or (past `shard_bytes`) ``model-KKKKK.safetensors``
                                  shards with ``model.safetensors.index.json`` — what transformers, vLLM and
                                  `lagoon.model.from_pretrained` read
    RUN_DIR/weights/LATEST.json   {version, path, digest, time}, replaced atomically after the directory
    RUN_DIR/weights/updates.jsonl one line per update (written by `lagoon.weights.publish`)

(``transfer = "shm"`` puts the versions in /dev/shm instead.) A version is staged in a hidden directory and
renamed into place, so a reader never sees half of one; only the newest ``keep_versions`` are kept.
Streaming: `VersionWriter.add` takes one runtime tensor at a time in the fixed order, splits it into hub
tensors and writes a shard whenever `shard_bytes` have gathered, so a trainer that gathers one full tensor
at a time never holds more than a shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from lagoon.rl.config import WeightsConfig
from lagoon.files import publish_mode, staging_dir
from lagoon.weights.tensors import Digest, hub_tensors

LATEST = "LATEST.json"
UPDATES = "updates.jsonl"
SHARD_BYTES = 2 * 2**30


def version_dir_name(version: int) -> str:
    return f"v_{version:08d}"


def store_root(config: WeightsConfig, run_dir: Path) -> Path:
    """Where versions are written: RUN_DIR/weights, or a per-run directory in /dev/shm for ``shm``."""
    if config.transfer == "shm" and Path("/dev/shm").is_dir():
        tag = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
        return Path("/dev/shm") / f"lagoon-weights-{tag}"
    return Path(run_dir) / "weights"


def segment_root(run_dir: Path) -> Path:
    """The per-run directory in /dev/shm holding the ``shared_memory`` transfer's segment files."""
    tag = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    return Path("/dev/shm") / f"lagoon-segments-{tag}"


def read_latest(root: Path) -> dict[str, Any] | None:
    path = Path(root) / LATEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


class VersionWriter:
    """One version directory, written tensor by tensor (runtime names in the fixed order), then committed."""

    def __init__(self, root: Path, version: int, model_config, tokenizer_dir: Path | None,
                 shard_bytes: int = SHARD_BYTES):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.version = version
        self.model_config = model_config
        self.tokenizer_dir = tokenizer_dir
        self.shard_bytes = shard_bytes
        self.staging = staging_dir(self.root, prefix=f".{version_dir_name(version)}.")   # the umask's mode
        self.digest = Digest()
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[dict[str, torch.Tensor] | str] = []
        self.weight_map: dict[str, str] = {}
        self.dtype: torch.dtype | None = None

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self.digest.add(name, tensor)
        for hub, piece in hub_tensors(name, tensor.detach().to("cpu")):
            if self.dtype is None and piece.is_floating_point() and not hub.endswith("e_score_correction_bias"):
                self.dtype = piece.dtype
            # vLLM reads the correction bias in fp32 whatever the weights' dtype.
            self.pending[hub] = piece.float() if hub.endswith("e_score_correction_bias") else piece.clone()
            self.pending_bytes += piece.numel() * piece.element_size()
        if self.pending_bytes >= self.shard_bytes:
            self._flush()

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self.pending:
            return
        name = f"model-{len(self.shards) + 1:05d}.safetensors"
        save_file(self.pending, self.staging / name, metadata={"format": "pt"})
        self.weight_map.update({key: name for key in self.pending})
        self.shards.append(name)
        self.pending, self.pending_bytes = {}, 0

    def commit(self, keep_versions: int) -> tuple[Path, str]:
        """Finish the directory, rename it into place, point LATEST.json at it; returns (path, digest)."""
        from lagoon.model.hf import CONFIG_FILE, LAGOON_MODEL_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, copy_tokenizer_files

        self._flush()
        if len(self.shards) == 1:
            (self.staging / self.shards[0]).rename(self.staging / WEIGHTS_FILE)
        else:
            index = {"metadata": {"total_size": sum((self.staging / s).stat().st_size for s in self.shards)},
                     "weight_map": dict(sorted(self.weight_map.items()))}
            (self.staging / WEIGHTS_INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        hf_config = self.model_config.to_hf_dict()
        hf_config["dtype"] = str(self.dtype or torch.float32).removeprefix("torch.")
        (self.staging / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
        (self.staging / LAGOON_MODEL_FILE).write_text(json.dumps(self.model_config.lagoon_fields(), indent=2) + "\n")
        if self.tokenizer_dir is not None:
            copy_tokenizer_files(Path(self.tokenizer_dir), self.staging)
        for path in self.staging.iterdir():   # safetensors writes 0600; a version is read by other processes
            publish_mode(path)
        target = self.root / version_dir_name(self.version)
        if target.exists():
            shutil.rmtree(target)
        self.staging.rename(target)
        digest = self.digest.hexdigest()
        latest = {"version": self.version, "path": str(target), "digest": digest, "time": time.time()}
        staging = self.root / f".{LATEST}.tmp-{os.getpid()}"
        staging.write_text(json.dumps(latest) + "\n")
        staging.replace(self.root / LATEST)
        prune(self.root, self.version, keep_versions)
        return target, digest

    def abandon(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def prune(root: Path, newest: int, keep_versions: int) -> None:
    keep = {version_dir_name(v) for v in range(newest - keep_versions + 1, newest + 1)}
    for path in Path(root).iterdir():
        if path.is_dir() and path.name.startswith("v_") and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
