"""Sharded checkpoints: every rank writes its own shards with torch.distributed.checkpoint; rank 0 publishes.

The directory (the contract, also in `lagoon.train.checkpoint` and docs/INTERFACES.md):

    DIR/checkpoints/step_00000200/
        config.json  lagoon_model.json  tokenizer files     the architecture (loads with lagoon.model.from_pretrained)
        dcp/                                               torch.distributed.checkpoint: .metadata + one file per rank
            model.<runtime name>                           float32 master weights, global shapes
            optim.step, optim.muon.<name>.momentum, optim.adamw.<name>.exp_avg|exp_avg_sq
        train_state/
            state.json  loader.json  rng_rank{r}.json      as before: step, data position, each rank's RNGs
        manifest.json                                      SHA-256 and size of every other file; written last

There is no model.safetensors: a checkpoint holds each tensor once, in shards, and ``lagoon export hf``
converts it to a Hugging Face directory tensor by tensor (`lagoon.parallel.export`), while
``lagoon.model.from_pretrained`` reads the ``dcp/`` directory directly. Keys and global shapes are the
same in every layout, so DCP reshards on load: W=4 HSDP → W=2 FSDP → one process.

Writing is collective: rank 0 creates the staging directory ``.step_N.tmp-<pid>``, every rank writes its
shards and its RNG state into it, then rank 0 writes the rest, fsyncs, writes the manifest and renames the
staging directory into place — a killed job leaves a staging directory the next run removes, never a
half-written checkpoint. Reading verifies the manifest first (`lagoon.train.checkpoint.newest_verified`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lagoon.parallel.load import DCP_DIR, MODEL_KEY, check_shapes, dcp_model_shapes, model_tensors
from lagoon.train import checkpoint as ckpt

OPTIM_KEY = "optim"


def _broadcast(obj: Any, group: dist.ProcessGroup | None) -> Any:
    if group is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


def write_model_files(config: Any, directory: Path, tokenizer_dir: Path | None, dtype: str = "float32") -> None:
    """config.json, lagoon_model.json and the tokenizer files of a checkpoint (no weights)."""
    from lagoon.model.hf import CONFIG_FILE, LAGOON_MODEL_FILE, copy_tokenizer_files

    hf_config = config.to_hf_dict()
    hf_config["dtype"] = dtype
    (directory / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
    (directory / LAGOON_MODEL_FILE).write_text(json.dumps(config.lagoon_fields(), indent=2) + "\n")
    if tokenizer_dir is not None:
        copy_tokenizer_files(Path(tokenizer_dir), directory)


def save(run_dir: Path, model: nn.Module, optimizer: Any, state: ckpt.CheckpointState, loader_state: dict[str, Any],
         rng_state: dict[str, Any], tokenizer_dir: Path | None, keep_last: int, rank: int = 0,
         group: dist.ProcessGroup | None = None) -> Path | None:
    """Write checkpoint `state.step` (every rank calls it); returns its path on rank 0, None elsewhere."""
    import torch.distributed.checkpoint as dcp

    from lagoon.optim.sharded_state import sharded_state_dict

    root = ckpt.checkpoints_root(run_dir)
    name = ckpt.step_dir_name(state.step)
    staging = None
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        (staging / ckpt.TRAIN_STATE).mkdir(parents=True)
    staging = Path(_broadcast(str(staging) if staging else None, group))
    try:
        content = {MODEL_KEY: model_tensors(model), OPTIM_KEY: sharded_state_dict(optimizer)}
        dcp.save(content, checkpoint_id=str(staging / DCP_DIR), no_dist=group is None)
        (staging / ckpt.TRAIN_STATE / f"rng_rank{rank}.json").write_text(json.dumps(rng_state))
        if group is not None:
            dist.barrier(group=group)
        if rank != 0:
            dist.barrier(group=group)
            return None
        write_model_files(model.config, staging, tokenizer_dir)
        (staging / ckpt.TRAIN_STATE / ckpt.LOADER_FILE).write_text(json.dumps(loader_state, default=ckpt._json_default))
        (staging / ckpt.TRAIN_STATE / ckpt.STATE_FILE).write_text(
            json.dumps(state.to_json(), indent=2, default=ckpt._json_default) + "\n")
        target = ckpt.publish(staging, root / name, state.step)
    except BaseException:
        if rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    ckpt.prune(root, keep_last)
    if group is not None:
        dist.barrier(group=group)
    return target


def load(path: Path, model: nn.Module, optimizer: Any | None, distributed: bool) -> None:
    """Fill the model (and the optimizer) from checkpoint `path`, each rank reading its own shards (collective
    when `distributed`). A checkpoint of another model shape is refused, naming it, before anything is read."""
    import torch.distributed.checkpoint as dcp

    from lagoon.optim.sharded_state import load_sharded_state_dict, sharded_state_dict

    check_shapes(model, dcp_model_shapes(path), path)
    content: dict[str, Any] = {MODEL_KEY: model_tensors(model)}
    if optimizer is not None:
        content[OPTIM_KEY] = sharded_state_dict(optimizer)
    with torch.no_grad():
        dcp.load(content, checkpoint_id=str(path / DCP_DIR), no_dist=not distributed)
    if optimizer is not None:
        load_sharded_state_dict(optimizer, content[OPTIM_KEY])
    model.reset_rotary()
