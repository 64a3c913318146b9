"""Held-out bits per byte for each capability group: document-masked, deterministic, tokenizer-independent.

bits per byte = Σ cross-entropy (nats) of predicted tokens ÷ (ln 2 · Σ UTF-8 bytes of those tokens).

Dividing by bytes rather than tokens makes models with different tokenizers comparable (Gao et al. 2020,
"The Pile", §5; nanochat's evaluate_bpb). Targets that carry no bytes (special tokens: the 〈|EOS|〉 that
opens every document) are left out of both sums, so predicting a document boundary never counts.

Each group's held-out documents are concatenated in order, cut into rows of ``seq_len`` positions, and
fed with their document ids, so no token attends across a document boundary and positions restart at
every document (the same masking as training). Only the first ``max_tokens`` tokens are used, so the
same call always scores the same tokens. With several data-parallel ranks, rows are dealt round-robin
and the sums are all-reduced in float64.

Shape legend: B rows, T positions.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lagoon.errors import LagoonError
from lagoon.model import LagunaForCausalLM
from lagoon.tokens import EOS_ID


def eval_stream(shards: Any, group: str, max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `max_tokens` + 1 held-out token ids of `group` and their document ids (both [N])."""
    held_out = shards.eval_set(group)
    ids = np.asarray(held_out.token_ids, dtype=np.int64)[: max_tokens + 1]
    starts = np.zeros(len(ids), dtype=np.int64)
    boundaries = np.asarray(getattr(held_out, "doc_starts", np.flatnonzero(ids == EOS_ID)), dtype=np.int64)
    boundaries = boundaries[boundaries < len(ids)]
    starts[boundaries] = 1
    document_ids = np.cumsum(starts)
    return ids, document_ids


@torch.no_grad()
def bits_per_byte(model: LagunaForCausalLM, ids: np.ndarray, document_ids: np.ndarray, token_bytes: np.ndarray,
                  seq_len: int, batch_size: int, device: torch.device | str = "cpu",
                  autocast_dtype: torch.dtype | None = None, group: dist.ProcessGroup | None = None) -> float:
    """Bits per byte of `model` on one token stream (see the module docstring)."""
    rows = (len(ids) - 1) // seq_len
    if rows == 0:
        raise LagoonError(f"an evaluation set of {len(ids)} tokens is shorter than one sequence of {seq_len}")
    usable = rows * seq_len
    inputs_RT = torch.from_numpy(ids[:usable].reshape(rows, seq_len))
    targets_RT = torch.from_numpy(ids[1 : usable + 1].reshape(rows, seq_len))
    documents_RT = torch.from_numpy(document_ids[:usable].reshape(rows, seq_len))
    bytes_RT = torch.from_numpy(np.asarray(token_bytes, dtype=np.int64))[targets_RT]
    # A target that starts a new document is a boundary prediction; its special token has no bytes anyway,
    # but masking by document as well keeps the rule independent of the tokenizer.
    next_documents_RT = torch.from_numpy(document_ids[1 : usable + 1].reshape(rows, seq_len))
    counted_RT = (bytes_RT > 0) & (next_documents_RT == documents_RT)

    rank, world = (dist.get_rank(group), dist.get_world_size(group)) if group is not None else (0, 1)
    was_training = model.training
    model.eval()
    nats = torch.zeros((), dtype=torch.float64)
    total_bytes = torch.zeros((), dtype=torch.float64)
    autocast = (torch.autocast(torch.device(device).type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    try:
        my_rows = list(range(rank, rows, world))
        for start in range(0, len(my_rows), batch_size):
            index = torch.tensor(my_rows[start : start + batch_size])
            input_BT = inputs_RT[index].to(device)
            with autocast:
                logits_BTV = model(input_BT, document_ids=documents_RT[index].to(device)).logits
            losses_BT = F.cross_entropy(logits_BTV.float().transpose(1, 2), targets_RT[index].to(device),
                                        reduction="none")
            mask_BT = counted_RT[index].to(device)
            nats += (losses_BT * mask_BT).sum().double().cpu()
            total_bytes += (bytes_RT[index] * counted_RT[index]).sum().double()
    finally:
        model.train(was_training)
    if group is not None:
        sums = torch.stack([nats, total_bytes]).to(device)
        dist.all_reduce(sums, group=group)
        nats, total_bytes = sums.cpu()
    if float(total_bytes) == 0:
        raise LagoonError("the evaluation tokens carry no bytes; is token_bytes right for this tokenizer?")
    return float(nats / (math.log(2) * total_bytes))


def evaluate_bpb(model: LagunaForCausalLM, shards: Any, groups: list[str] | None = None, max_tokens: int = 16384,
                 seq_len: int = 256, batch_size: int = 8, device: torch.device | str | None = None,
                 autocast_dtype: torch.dtype | None = None,
                 group: dist.ProcessGroup | None = None) -> dict[str, float]:
    """Held-out bits per byte of each capability group (all of the shard set's groups by default)."""
    names = list(shards.groups) if groups is None else list(groups)
    unknown = [name for name in names if name not in shards.groups]
    if unknown:
        raise LagoonError(f"no capability group {unknown[0]!r} in the shard set; it has {', '.join(shards.groups)}")
    device = device if device is not None else next(model.parameters()).device
    results = {}
    for name in names:
        ids, document_ids = eval_stream(shards, name, max_tokens)
        results[name] = bits_per_byte(model, ids, document_ids, shards.token_bytes, seq_len, batch_size, device,
                                      autocast_dtype, group)
    return results
