"""Filling a materialized model from disk, each rank reading only the slices it holds, in the target dtype.

Two sources:

- a Hugging Face Laguna directory (``model.safetensors`` or sharded files with
  ``model.safetensors.index.json``), in the on-disk naming (`lagoon.model.hf`: one tensor per routed expert)
  or transformers' fused runtime naming. Each parameter's local region is read with safetensors'
  ``get_slice``; an expert stack [E, ·, ·] reads only the experts of its local rows. A file is opened for
  one parameter at a time, so the pages it maps are released before the next one: the process holds the
  model in its target dtype plus one parameter in flight.
- a lagoon sharded checkpoint (``DIR/dcp``, torch.distributed.checkpoint): DCP reads the chunks that
  overlap each rank's shard; across a different world size or layout it reshards on read.

`load_weights` picks by what the directory holds. Both leave tied LM heads tied (the head is stored once,
as the embedding) and refuse a file whose tensors do not match the model's shapes, naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from lagoon.errors import LagoonError
from lagoon.parallel.materialize import local_part, local_region

DCP_DIR = "dcp"
"""The torch.distributed.checkpoint directory inside a lagoon checkpoint (model and optimizer state)."""
MODEL_KEY = "model"


def has_sharded_weights(directory: Path) -> bool:
    return (Path(directory) / DCP_DIR / ".metadata").is_file()


# --------------------------------------------------------------------------------------------------
# Hugging Face safetensors


class SafetensorsDirectory:
    """Which file holds which tensor in a single-file or sharded safetensors checkpoint."""

    def __init__(self, directory: Path):
        from lagoon.model.hf import WEIGHTS_FILE, WEIGHTS_INDEX_FILE

        self.directory = Path(directory)
        single, index = self.directory / WEIGHTS_FILE, self.directory / WEIGHTS_INDEX_FILE
        try:
            if single.is_file():
                files = {single.name: single}
            elif index.is_file():
                weight_map = json.loads(index.read_text())["weight_map"]
                files = {name: self.directory / file for name, file in weight_map.items()}
            else:
                raise LagoonError(f"{self.directory} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}")
            self.where: dict[str, Path] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}
            for path in sorted(set(files.values())):
                for name, entry in _header(path).items():
                    self.where[name] = path
                    self.shapes[name] = tuple(entry["shape"])
        except (OSError, KeyError, ValueError) as error:
            raise LagoonError(f"cannot read the weights in {self.directory}: {error}") from None

    def read(self, name: str, region: tuple[slice, ...] | None = None) -> torch.Tensor:
        """Tensor `name` (its `region` only), as stored."""
        from safetensors import SafetensorError, safe_open

        path = self.where[name]
        try:
            with safe_open(path, framework="pt") as handle:
                if region is None:
                    return handle.get_tensor(name)
                return handle.get_slice(name)[region]
        except (SafetensorError, OSError) as error:
            raise LagoonError(f"cannot read {name} from {path}: {error}") from None


def _header(path: Path) -> dict[str, dict]:
    """The JSON header of a safetensors file (names, dtypes, shapes), without reading any tensor."""
    with path.open("rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    return header


def _disk_name(name: str) -> str:
    """The on-disk name of a non-expert runtime tensor (`lagoon.model.hf`'s renames)."""
    name = name.replace(".mlp.gate.e_score_correction_bias", ".mlp.experts.e_score_correction_bias")
    return name.replace(".mlp.shared_experts.", ".mlp.shared_expert.")


def read_runtime_tensor(files: SafetensorsDirectory, name: str, shape: tuple[int, ...],
                        region: tuple[slice, ...]) -> torch.Tensor:
    """Runtime tensor `name`'s `region` from a Hugging Face directory, in either naming."""
    from lagoon.model.hf import _EXPERT_STACK

    for candidate in (name, _disk_name(name)):
        if candidate in files.where:
            if files.shapes[candidate] != tuple(shape):
                raise LagoonError(f"{candidate} in {files.where[candidate]} has shape {files.shapes[candidate]}, "
                                  f"the model expects {tuple(shape)}")
            return files.read(candidate, region)
    match = _EXPERT_STACK.match(name)
    if match is None:
        raise LagoonError(f"{files.directory} has no tensor {_disk_name(name)}")
    prefix, kind = match.groups()
    assert all(r == slice(0, s) for r, s in zip(region[1:], shape[1:])), "expert stacks are sharded by expert only"
    pieces = []
    for j in range(region[0].start, region[0].stop):
        parts = ("gate_proj", "up_proj") if kind == "gate_up_proj" else ("down_proj",)
        keys = [f"{prefix}.{j}.{part}.weight" for part in parts]
        for key in keys:
            if key not in files.where:
                raise LagoonError(f"{files.directory} is missing {key}")
        expert = torch.cat([files.read(key) for key in keys]) if len(keys) > 1 else files.read(keys[0])
        if tuple(expert.shape) != tuple(shape[1:]):
            raise LagoonError(f"expert {j} of {prefix} in {files.directory} has shape {tuple(expert.shape)}, "
                              f"the model expects {tuple(shape[1:])}")
        pieces.append(expert)
    return torch.stack(pieces) if pieces else torch.empty((0, *shape[1:]))


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's stored tensors by runtime name (a tied LM head is stored once, as the embedding)."""
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


@torch.no_grad()
def load_hf_slices(model: nn.Module, directory: Path) -> None:
    """Fill every tensor's local region from a Hugging Face directory (one parameter in memory at a time)."""
    from lagoon.model.hf import _EXPERT_SPLIT

    files = SafetensorsDirectory(directory)
    state = model_tensors(model)
    known = set(state) | {_disk_name(name) for name in state}
    unexpected = sorted(n for n in files.where if n not in known and not _EXPERT_SPLIT.match(n)
                        and not (n == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False)))
    if unexpected:
        raise LagoonError(f"weights in {directory} do not match its config.json: unexpected {unexpected[:3]}")
    for name, target in state.items():
        region = local_region(target)
        local = local_part(target)
        local.copy_(read_runtime_tensor(files, name, tuple(target.shape), region).reshape(local.shape))


# --------------------------------------------------------------------------------------------------
# lagoon sharded checkpoints (torch.distributed.checkpoint)


def dcp_model_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Runtime name → global shape of every model tensor in a sharded checkpoint (reads the metadata only)."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(Path(directory) / DCP_DIR)).read_metadata()
    prefix = f"{MODEL_KEY}."
    return {key[len(prefix):]: tuple(entry.size) for key, entry in metadata.state_dict_metadata.items()
            if key.startswith(prefix) and hasattr(entry, "size")}


def read_dcp_tensors(directory: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(runtime name, full tensor as stored) of every model tensor in a sharded checkpoint, one at a time."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    path = str(Path(directory) / DCP_DIR)
    metadata = FileSystemReader(path).read_metadata()
    prefix = f"{MODEL_KEY}."
    for key, entry in metadata.state_dict_metadata.items():
        if not key.startswith(prefix) or not hasattr(entry, "size"):
            continue
        tensor = torch.empty(tuple(entry.size), dtype=entry.properties.dtype)
        dcp.load({MODEL_KEY: {key[len(prefix):]: tensor}}, checkpoint_id=path, no_dist=True)
        yield key[len(prefix):], tensor


def check_shapes(model: nn.Module, found: dict[str, tuple[int, ...]], source: Path) -> None:
    """Refuse a checkpoint of another model shape with one line naming the checkpoint and a tensor."""
    expected = {name: tuple(t.shape) for name, t in model_tensors(model).items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(name for name in set(expected) & set(found) if expected[name] != found[name])
    if missing or unexpected or wrong:
        detail = (f"{wrong[0]} has shape {found[wrong[0]]}, the model {expected[wrong[0]]}" if wrong else
                  f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}")
        raise LagoonError(f"checkpoint {source} holds a different model ({detail}); "
                          f"use the checkpoint's architecture or a new run directory")


def load_dcp(model: nn.Module, directory: Path, distributed: bool) -> None:
    """Fill the model from a sharded checkpoint. `distributed`: every rank calls it together and DCP
    coordinates the plan; otherwise this process reads on its own, a batch of tensors at a time."""
    import torch.distributed.checkpoint as dcp

    path = str(Path(directory) / DCP_DIR)
    state = model_tensors(model)
    check_shapes(model, dcp_model_shapes(directory), Path(directory))
    if distributed:
        dcp.load({MODEL_KEY: state}, checkpoint_id=path)
        return
    for batch in _batches(state, 256 << 20):
        dcp.load({MODEL_KEY: batch}, checkpoint_id=path, no_dist=True)


def _batches(state: dict[str, torch.Tensor], limit: int) -> Iterator[dict[str, torch.Tensor]]:
    batch: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in state.items():
        batch[name] = tensor
        size += tensor.numel() * tensor.element_size()
        if size >= limit:
            yield batch
            batch, size = {}, 0
    if batch:
        yield batch


def load_weights(model: nn.Module, directory: Path, distributed: bool = False) -> None:
    """Fill a materialized model from a lagoon sharded checkpoint or a Hugging Face directory."""
    directory = Path(directory)
    if has_sharded_weights(directory):
        load_dcp(model, directory, distributed)
    else:
        load_hf_slices(model, directory)
    if hasattr(model, "reset_rotary"):
        model.reset_rotary()
