"""Filling a materialized model from disk, each rank reading only the slices it holds, in the target dtype.

Two sources:

- a Hugging Face Laguna directory (``model.safetensors`` or sharded files with
  ``model.safetensors.index.json``), in the on-disk naming (`lagoon.model.hf`: one tensor per routed expert)
  or transformers' fused runtime naming. Each parameter's local rows are read from the file straight into
  the parameter (`SafetensorsDirectory.read_rows_into`: one byte range per tensor, from the safetensors
  header's offsets); an expert stack [E, ·, ·] reads only the experts of its local rows. Nothing is
  memory-mapped, so the process holds the model in its target dtype plus, when a cast is needed, one
  tensor's rows in the stored dtype.
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


DTYPES = {"F64": torch.float64, "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


class SafetensorsDirectory:
    """Which file holds which tensor in a single-file or sharded safetensors checkpoint, from the headers.

    Reads go straight from the file into the destination with ``readinto``: the rows a rank holds are one
    contiguous byte range of a row-major tensor (FSDP2 shards dim 0), so nothing is mapped or staged when
    the stored dtype is the target's, and one tensor's rows are staged when it must be cast."""

    def __init__(self, directory: Path):
        from lagoon.model.hf import WEIGHTS_FILE, WEIGHTS_INDEX_FILE

        self.directory = Path(directory)
        single, index = self.directory / WEIGHTS_FILE, self.directory / WEIGHTS_INDEX_FILE
        try:
            if single.is_file():
                files = [single]
            elif index.is_file():
                files = sorted({self.directory / f for f in json.loads(index.read_text())["weight_map"].values()})
            else:
                raise LagoonError(f"{self.directory} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}")
            self.entries: dict[str, tuple[Path, torch.dtype, tuple[int, ...], int]] = {}
            for path in files:
                start, header = _header(path)
                for name, entry in header.items():
                    self.entries[name] = (path, DTYPES[entry["dtype"]], tuple(entry["shape"]),
                                          start + entry["data_offsets"][0])
        except (OSError, KeyError, ValueError) as error:
            raise LagoonError(f"cannot read the weights in {self.directory}: {error}") from None

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: entry[2] for name, entry in self.entries.items()}

    def read_rows_into(self, name: str, rows: slice, out: torch.Tensor) -> None:
        """Rows `rows` (dim 0) of tensor `name` into `out` (same shape as those rows), cast if needed."""
        path, dtype, shape, offset = self.entries[name]
        row_bytes = dtype.itemsize
        for size in shape[1:]:
            row_bytes *= size
        direct = out.dtype == dtype and out.device.type == "cpu" and out.is_contiguous()
        buffer = out if direct else torch.empty(out.shape, dtype=dtype)
        if buffer.numel():
            view = memoryview(buffer.view(-1).view(torch.uint8).numpy())
            try:
                with path.open("rb") as handle:
                    handle.seek(offset + rows.start * row_bytes)
                    if handle.readinto(view) != len(view):
                        raise LagoonError(f"{path} ends inside tensor {name}; the file is truncated")
            except OSError as error:
                raise LagoonError(f"cannot read {name} from {path}: {error}") from None
        if not direct:
            out.copy_(buffer)

    def read(self, name: str) -> torch.Tensor:
        """Tensor `name` as stored."""
        _, dtype, shape, _ = self.entries[name]
        out = torch.empty(shape, dtype=dtype)
        self.read_rows_into(name, slice(0, shape[0] if shape else 1), out)
        return out

    @property
    def where(self) -> dict[str, Path]:
        return {name: entry[0] for name, entry in self.entries.items()}


def _header(path: Path) -> tuple[int, dict[str, dict]]:
    """(where the data starts, the JSON header: names, dtypes, shapes, offsets) of a safetensors file."""
    with path.open("rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
    header.pop("__metadata__", None)
    return 8 + size, header


def _disk_name(name: str) -> str:
    """The on-disk name of a non-expert runtime tensor (`lagoon.model.hf`'s renames)."""
    name = name.replace(".mlp.gate.e_score_correction_bias", ".mlp.experts.e_score_correction_bias")
    return name.replace(".mlp.shared_experts.", ".mlp.shared_expert.")


def fill_runtime_tensor(files: SafetensorsDirectory, name: str, shape: tuple[int, ...], region: tuple[slice, ...],
                        out: torch.Tensor) -> None:
    """Write runtime tensor `name`'s `region` (rows of dim 0) from a Hugging Face directory into `out`."""
    from lagoon.weights.tensors import _EXPERT_STACK

    assert all(r == slice(0, s) for r, s in zip(region[1:], shape[1:])), "only dim 0 is ever sharded"
    rows = region[0] if region else slice(0, 1)
    for candidate in (name, _disk_name(name)):
        if candidate in files.entries:
            if files.shapes[candidate] != tuple(shape):
                raise LagoonError(f"{candidate} in {files.where[candidate]} has shape {files.shapes[candidate]}, "
                                  f"the model expects {tuple(shape)}")
            files.read_rows_into(candidate, rows, out)
            return
    match = _EXPERT_STACK.match(name)
    if match is None:
        raise LagoonError(f"{files.directory} has no tensor {_disk_name(name)}")
    prefix, kind = match.groups()
    parts = ("gate_proj", "up_proj") if kind == "gate_up_proj" else ("down_proj",)
    height = shape[1] // len(parts)
    for k, j in enumerate(range(rows.start, rows.stop)):
        for p, part in enumerate(parts):
            key = f"{prefix}.{j}.{part}.weight"
            if key not in files.entries:
                raise LagoonError(f"{files.directory} is missing {key}")
            if files.shapes[key] != (height, *shape[2:]):
                raise LagoonError(f"{key} in {files.where[key]} has shape {files.shapes[key]}, the model expects "
                                  f"{(height, *shape[2:])}")
            files.read_rows_into(key, slice(0, height), out[k, p * height : (p + 1) * height])


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's stored tensors by runtime name (a tied LM head is stored once, as the embedding)."""
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    return state


@torch.no_grad()
def load_hf_slices(model: nn.Module, directory: Path) -> None:
    """Fill every tensor's local region from a Hugging Face directory (one parameter in memory at a time)."""
    from lagoon.weights.tensors import _EXPERT_SPLIT

    files = SafetensorsDirectory(directory)
    state = model_tensors(model)
    known = set(state) | {_disk_name(name) for name in state}
    unexpected = sorted(n for n in files.where if n not in known and not _EXPERT_SPLIT.match(n)
                        and not (n == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False)))
    if unexpected:
        raise LagoonError(f"weights in {directory} do not match its config.json: unexpected {unexpected[:3]}")
    for name, target in state.items():
        fill_runtime_tensor(files, name, tuple(target.shape), local_region(target), local_part(target))


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
