"""Hugging Face checkpoint format: ``config.json`` + ``model.safetensors`` that transformers, vLLM and SGLang load.

On disk, Laguna checkpoints store each routed expert separately and name two tensors differently from the
runtime modules (transformers' conversion mapping for ``laguna`` undoes exactly this when loading); the
mapping lives with the rest of the weights' naming in `lagoon.weights.tensors`. lagoon writes the on-disk
form and reads either form. Writes go to a temporary directory that is renamed
into place, so an interrupted export never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lagoon.errors import LagoonError
from lagoon.files import publish_mode, staging_dir
from lagoon.model.config import ModelConfig
from lagoon.model.transformer import LagunaForCausalLM
from lagoon.weights.tensors import from_hub_state_dict, to_hub_state_dict

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
LAGOON_MODEL_FILE = "lagoon_model.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "token_bytes.json")


def read_config(directory: Path) -> ModelConfig:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise LagoonError(f"{directory} has no {CONFIG_FILE}; is it a checkpoint directory?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise LagoonError(f"{path} is not valid JSON: {error}") from None
    lagoon_fields = None
    extra = directory / LAGOON_MODEL_FILE
    if extra.is_file():
        lagoon_fields = json.loads(extra.read_text())
    return ModelConfig.from_hf_dict(data, lagoon_fields)


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a single-file or sharded safetensors checkpoint (or of a lagoon sharded checkpoint's
    ``dcp/``, in runtime names)."""
    from lagoon.parallel.load import has_sharded_weights, read_dcp_tensors

    if has_sharded_weights(directory):
        return dict(read_dcp_tensors(directory))
    single = directory / WEIGHTS_FILE
    index = directory / WEIGHTS_INDEX_FILE
    try:
        if single.is_file():
            return load_file(single)
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load_file(directory / shard))
            return state
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as error:
        raise LagoonError(f"cannot read the weights in {directory}: {error}") from None
    raise LagoonError(f"{directory} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE}")


def stored_dtype(directory: Path) -> torch.dtype:
    """The weights' dtype recorded in config.json (``dtype`` or the older ``torch_dtype``), fp32 if absent."""
    data = json.loads((directory / CONFIG_FILE).read_text())
    name = data.get("dtype") or data.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def from_pretrained(path: str | os.PathLike, device: str | torch.device = "cpu",
                    dtype: torch.dtype | str = "auto") -> LagunaForCausalLM:
    """Load a lagoon checkpoint directory or a Hugging Face Laguna directory.

    `dtype` "auto" keeps the dtype recorded in config.json; pass ``torch.float32`` for fp32 master weights.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise LagoonError(f"checkpoint directory {directory} does not exist")
    config = read_config(directory)
    if dtype == "auto":
        dtype = stored_dtype(directory)
    from lagoon.parallel.load import load_weights
    from lagoon.parallel.materialize import materialize

    # Built on the meta device and cast there (free), then allocated once in the target dtype and filled
    # tensor by tensor: the process never holds a second copy of the weights, nor an fp32 one of a bf16 model.
    with torch.device("meta"):
        model = LagunaForCausalLM(config)
    model.to(dtype)
    materialize(model, device)
    load_weights(model, directory)
    return model


def save_pretrained(model: LagunaForCausalLM, path: str | os.PathLike, dtype: torch.dtype | None = None,
                    tokenizer_dir: str | os.PathLike | None = None, extra_files: dict[str, Any] | None = None) -> Path:
    """Write the Hugging Face form of `model` to `path` atomically (temporary directory, then rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target.parent, prefix=f".{target.name}.")   # the umask's mode, not mkdtemp's 0700
    try:
        write_checkpoint_files(model, staging, dtype=dtype, tokenizer_dir=tokenizer_dir)
        for name, content in (extra_files or {}).items():
            (staging / name).write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
        if target.exists():
            backup = target.with_name(f".{target.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            target.rename(backup)
            staging.rename(target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_checkpoint_files(model: LagunaForCausalLM, directory: Path, dtype: torch.dtype | None = None,
                           tokenizer_dir: str | os.PathLike | None = None) -> None:
    """Write config.json, model.safetensors, lagoon_model.json and tokenizer files into `directory`."""
    config = model.config
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    state = to_hub_state_dict(state)
    weights_dtype = dtype or next(iter(state.values())).dtype
    state = {name: tensor.to(device="cpu", dtype=weights_dtype if tensor.is_floating_point() else tensor.dtype)
             for name, tensor in state.items()}
    # vLLM reads the correction bias in fp32 whatever the weights' dtype.
    for name in state:
        if name.endswith("e_score_correction_bias"):
            state[name] = state[name].float()
    save_file(state, directory / WEIGHTS_FILE, metadata={"format": "pt"})
    publish_mode(directory / WEIGHTS_FILE)   # safetensors writes 0600 whatever the umask
    hf_config = config.to_hf_dict()
    hf_config["dtype"] = str(weights_dtype).removeprefix("torch.")
    (directory / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
    (directory / LAGOON_MODEL_FILE).write_text(json.dumps(config.lagoon_fields(), indent=2) + "\n")
    if tokenizer_dir is not None:
        copy_tokenizer_files(Path(tokenizer_dir), directory)


def copy_tokenizer_files(source: Path, target: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)
            copied.append(name)
    return copied


def export_hf(source: str | os.PathLike, out: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """`lagoon export hf`: a lagoon checkpoint (or any Laguna directory) → a clean Hugging Face directory,
    streamed tensor by tensor (`lagoon.parallel.export`): memory stays bounded by one output file."""
    from lagoon.parallel.export import stream_export

    return stream_export(Path(source), Path(out), dtype)


def import_hf(source: str | os.PathLike, out: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
    """`lagoon import hf`: a Hugging Face Laguna directory → a lagoon checkpoint directory."""
    return export_hf(source, out, dtype=dtype)
