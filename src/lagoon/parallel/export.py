"""A lagoon checkpoint (sharded or not) or a Laguna directory → a Hugging Face directory, tensor by tensor.

    stream_export(Path("run/checkpoints/step_00000200"), Path("hf/"), torch.bfloat16)

Each tensor is read alone (from ``dcp/`` or from safetensors), renamed and split into the on-disk form
(`lagoon.model.hf.to_hub_state_dict`), cast, and added to the current output file; a file is written once
it reaches `shard_bytes`. Memory is therefore bounded by one output file plus one tensor, whatever the
model's size. One file is ``model.safetensors``; more are ``model-0000k-of-0000N.safetensors`` with the
usual ``model.safetensors.index.json`` (what transformers and vLLM read). The directory is staged and
renamed into place, so an interrupted export leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from lagoon.errors import LagoonError
from lagoon.files import publish_mode, staging_dir

DEFAULT_SHARD_BYTES = 4 << 30


def _source_tensors(source: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(on-disk name, tensor as stored) one at a time."""
    from lagoon.model.hf import to_hub_state_dict
    from lagoon.parallel.load import SafetensorsDirectory, has_sharded_weights, read_dcp_tensors

    if has_sharded_weights(source):
        for name, tensor in read_dcp_tensors(source):
            yield from to_hub_state_dict({name: tensor}).items()
        return
    files = SafetensorsDirectory(source)
    for name in files.where:
        yield from to_hub_state_dict({name: files.read(name)}).items()


def stream_export(source: Path, out: Path, dtype: torch.dtype | None = None,
                  shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write the Hugging Face form of checkpoint `source` to `out` (see the module docstring)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from lagoon.model.hf import CONFIG_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, read_config, stored_dtype
    from lagoon.parallel.checkpoint import write_model_files

    if not source.is_dir():
        raise LagoonError(f"checkpoint directory {source} does not exist")
    config = read_config(source)
    weights_dtype = dtype or stored_dtype(source)
    _check_source(source, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(out.parent, prefix=f".{out.name}.")   # the umask's mode, not mkdtemp's 0700
    try:
        parts: list[dict[str, torch.Tensor]] = [{}]
        size, files = 0, []

        def flush() -> None:
            nonlocal size
            files.append(staging / f".part-{len(files):05d}.safetensors")
            save_file(parts[-1], files[-1], metadata={"format": "pt"})
            parts[-1], size = {}, 0

        for name, tensor in _source_tensors(source):
            # vLLM reads the correction bias in fp32 whatever the weights' dtype.
            cast = torch.float32 if name.endswith("e_score_correction_bias") else weights_dtype
            tensor = tensor.to(cast) if tensor.is_floating_point() else tensor
            parts[-1][name] = tensor.contiguous()
            size += tensor.numel() * tensor.element_size()
            if size >= shard_bytes:
                flush()
        if parts[-1] or not files:
            flush()
        if len(files) == 1:
            files[0].rename(staging / WEIGHTS_FILE)
        else:
            weight_map = {}
            for k, part in enumerate(files, start=1):
                final = staging / f"model-{k:05d}-of-{len(files):05d}.safetensors"
                part.rename(final)
                with safe_open(final, framework="pt") as handle:
                    weight_map.update({key: final.name for key in handle.keys()})
            (staging / WEIGHTS_INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
        write_model_files(config, staging, source, dtype=str(weights_dtype).removeprefix("torch."))
        assert (staging / CONFIG_FILE).is_file()
        for path in staging.iterdir():   # safetensors writes 0600; published files follow the umask
            publish_mode(path)
        if out.exists():
            backup = out.with_name(f".{out.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            out.rename(backup)
            staging.rename(out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _check_source(source: Path, config) -> None:
    """Refuse, before writing anything, weights that do not match config.json (one line naming the tensor)."""
    from lagoon.model import LagunaForCausalLM
    from lagoon.parallel.load import SafetensorsDirectory, check_shapes, dcp_model_shapes, has_sharded_weights

    with torch.device("meta"):
        model = LagunaForCausalLM(config)
    if has_sharded_weights(source):
        check_shapes(model, dcp_model_shapes(source), source)
        return
    from lagoon.model.hf import from_hub_state_dict

    files = SafetensorsDirectory(source)
    shapes = {name: torch.empty(shape, device="meta") for name, shape in files.shapes.items()}
    found = {name: tuple(t.shape) for name, t in from_hub_state_dict(shapes).items()}
    if config.tie_word_embeddings:
        found.pop("lm_head.weight", None)
    check_shapes(model, found, source)
