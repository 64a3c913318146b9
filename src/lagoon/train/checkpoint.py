"""Checkpoint directories: written atomically, verified by a SHA-256 manifest, pruned to `keep_last`.

The contract (docs/INTERFACES.md, "Checkpoint directory"; written by `lagoon.parallel.checkpoint.save`, collectively):

    DIR/checkpoints/step_00000200/
        config.json  lagoon_model.json                        the architecture (lagoon.model.from_pretrained)
        tokenizer.json  tokenizer_config.json  ...            the shard set's tokenizer files
        dcp/                                                  torch.distributed.checkpoint, one file per rank:
            .metadata  __0_0.distcp  ...                      model.<name> (fp32 master weights) and
                                                              optim.step / optim.muon.* / optim.adamw.*
        train_state/
            state.json            step, tokens seen, world size, sdc_digest, last metrics, resolved config
            loader.json           the data loader's position in the global stream (world-size independent)
            rng_rank{r}.json      each rank's torch / CUDA / numpy / python RNG states
        manifest.json             SHA-256 and size of every other file; written last

Weights and optimizer state are stored once, sharded as the writing job held them, with global shapes and
layout-independent keys: any world size and layout (DDP, FSDP, HSDP) resumes from any other. The directory
loads with ``lagoon.model.from_pretrained`` (which reads ``dcp/``) and ``lagoon export hf`` converts it,
tensor by tensor, to a Hugging Face directory.

A checkpoint is staged in ``checkpoints/.step_NNNNNNNN.tmp-<pid>`` and renamed into place only when
complete, so a killed writer leaves either nothing or a staging directory that the next run removes.
Resuming takes the newest checkpoint whose manifest verifies and reports why it skipped any newer one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


MANIFEST = "manifest.json"
TRAIN_STATE = "train_state"
STATE_FILE = "state.json"
LOADER_FILE = "loader.json"
FORMAT = "lagoon-checkpoint/2"
DCP_METADATA = "dcp/.metadata"

_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_STAGING_DIR = re.compile(r"^\.step_(\d{8,})\.tmp-\d+$")


def checkpoints_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


@dataclass
class CheckpointState:
    """The training state of one checkpoint besides the model weights."""

    step: int
    """Optimizer steps completed."""
    tokens_seen: int
    """Training tokens consumed so far (all ranks)."""
    world_size: int
    """Data-parallel ranks of the run that wrote it."""
    sdc_digest: str | None = None
    """A digest of the weights verified by the silent-data-corruption check; None until one is set."""
    last_metrics: dict[str, Any] = field(default_factory=dict)
    """The metrics line of the step, with the latest evaluation (a finished run returns these)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The resolved run config that produced the checkpoint."""

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "step": self.step, "tokens_seen": self.tokens_seen, "world_size": self.world_size,
                "sdc_digest": self.sdc_digest, "last_metrics": self.last_metrics, "config": self.config}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "CheckpointState":
        return cls(step=int(data["step"]), tokens_seen=int(data["tokens_seen"]), world_size=int(data["world_size"]),
                   sdc_digest=data.get("sdc_digest"), last_metrics=data.get("last_metrics") or {},
                   config=data.get("config") or {})


# --------------------------------------------------------------------------------------------------
# Manifest


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path, step: int) -> dict[str, Any]:
    """Hash every file under `directory` and write manifest.json (the last file of a checkpoint)."""
    files = {str(p.relative_to(directory)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in _files_under(directory)}
    manifest = {"format": FORMAT, "step": step, "files": files}
    _write_durably(directory / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def verify(directory: Path) -> str | None:
    """None if every file in the manifest is present with its size and SHA-256; else why not (one line)."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return "no manifest.json (an interrupted or foreign write)"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        return "manifest.json is not a valid lagoon manifest"
    if manifest.get("format") != FORMAT:
        return f"written by another lagoon checkpoint format ({manifest.get('format')}, this one reads {FORMAT})"
    for required in ("config.json", DCP_METADATA, f"{TRAIN_STATE}/{STATE_FILE}", f"{TRAIN_STATE}/{LOADER_FILE}",
                     f"{TRAIN_STATE}/rng_rank0.json"):
        if required not in files:
            return f"manifest.json does not list {required}"
    for name, entry in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry.get("bytes"):
            return f"{name} has {path.stat().st_size} bytes, the manifest says {entry.get('bytes')}"
        if sha256_file(path) != entry.get("sha256"):
            return f"{name} does not match its SHA-256 in manifest.json"
    return None


# --------------------------------------------------------------------------------------------------
# Writing


def _write_durably(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_tree(directory: Path) -> None:
    for path in [*_files_under(directory), directory / MANIFEST]:
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    for sub in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
        _fsync_dir(sub)


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def publish(staging: Path, target: Path, step: int) -> Path:
    """Make the complete staging directory durable, write its manifest, and rename it to `target` atomically."""
    _fsync_tree(staging)
    write_manifest(staging, step)
    if target.exists():  # a rollback re-writes a step: swap the old one out only once the new one is whole
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(target)
    _fsync_dir(target.parent)
    return target


def _json_default(value: Any) -> Any:
    if isinstance(value, (torch.Tensor,)):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in state.json")


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Finished checkpoint directories (verified or not), newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found, reverse=True)


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints; returns what was deleted."""
    removed = []
    for _, path in step_dirs(root)[keep_last:]:
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


# --------------------------------------------------------------------------------------------------
# Finding and reading


def remove_staging(root: Path, say: Callable[[str], None]) -> None:
    """Delete staging directories of writes that never finished (the writer was killed)."""
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        if path.is_dir() and (_STAGING_DIR.match(path.name) or ".old-" in path.name):
            say(f"removing {path.name}: an interrupted checkpoint write")
            shutil.rmtree(path, ignore_errors=True)


def newest_verified(run_dir: Path, say: Callable[[str], None]) -> Path | None:
    """The newest checkpoint under DIR/checkpoints whose manifest verifies; `say` why each newer one was skipped."""
    root = checkpoints_root(run_dir)
    for _, path in step_dirs(root):
        problem = verify(path)
        if problem is None:
            return path
        say(f"skipping checkpoint {path.name}: {problem}")
    return None


def read_state(path: Path) -> CheckpointState:
    return CheckpointState.from_json(json.loads((path / TRAIN_STATE / STATE_FILE).read_text()))


def read_loader_state(path: Path) -> dict[str, Any]:
    return json.loads((path / TRAIN_STATE / LOADER_FILE).read_text())


def read_rng_state(path: Path, rank: int) -> dict[str, Any]:
    """Rank `rank`'s RNG states; rank 0's when the checkpoint came from a smaller world."""
    train_state = path / TRAIN_STATE
    source = rank if (train_state / f"rng_rank{rank}.json").is_file() else 0
    return json.loads((train_state / f"rng_rank{source}.json").read_text())
