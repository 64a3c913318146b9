"""Held-out bits per byte for each capability group: document-masked, deterministic, tokenizer-independent.

bits per byte = Σ_t −log2 p(x_t | x_<t) ÷ Σ_t token_bytes[x_t] over every predicted token of the group's
held-out stream (the definition in `lagoon.data.evalset`; Gao et al. 2020, "The Pile", §5, for why bytes:
models with different tokenizers stay comparable). The 〈|EOS|〉 that opens each document is predicted
too (the model must say where a document ends) but carries no bytes.

The stream is cut by `EvalSet.batches` into rows that predict each token exactly once, with document ids,
so no token attends across a document boundary and positions restart at each document (the same
masking as training). Only the first ``max_tokens`` tokens are used, so the same call always scores
the same tokens. With several data-parallel ranks, batches are dealt round-robin and the sums are
all-reduced in float64.

The model may be sharded (FSDP2/HSDP, `lagoon.parallel`): its forward is then a collective (each block's
parameters are all-gathered over the shard group), so every rank must run the same number of forward
passes. A rank whose share of the batches is one short runs one fully masked batch instead — a single
position whose target is ignored, adding nothing to either sum. The figures are those of one process over
the same batches, up to the order of the float64 sums; no rank ever holds an unsharded copy of the model.

Shape legend: B rows, T positions, V vocabulary.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lagoon.errors import LagoonError
from lagoon.model import IGNORE_INDEX, LagunaForCausalLM


@torch.no_grad()
def bits_per_byte(model: LagunaForCausalLM, batches: Iterable[Any], token_bytes: np.ndarray,
                  device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None,
                  group: dist.ProcessGroup | None = None) -> float:
    """Bits per byte of `model` over `batches` (each with input_ids, targets, document_ids [B, T])."""
    rank, world = (dist.get_rank(group), dist.get_world_size(group)) if group is not None else (0, 1)
    bytes_V = torch.from_numpy(np.asarray(token_bytes, dtype=np.int64))
    was_training = model.training
    model.eval()
    nats = torch.zeros((), dtype=torch.float64)
    total_bytes = torch.zeros((), dtype=torch.float64)
    autocast = (torch.autocast(torch.device(device).type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())

    def score(input_ids_BT: torch.Tensor, targets_BT: torch.Tensor, document_ids_BT: torch.Tensor) -> None:
        nonlocal nats, total_bytes
        counted_BT = targets_BT != IGNORE_INDEX
        with autocast:
            logits_BTV = model(input_ids_BT.to(device), document_ids=document_ids_BT.to(device)).logits
        losses_BT = F.cross_entropy(logits_BTV.float().transpose(1, 2), targets_BT.to(device),
                                    ignore_index=IGNORE_INDEX, reduction="none")
        nats += losses_BT.sum().double().cpu()
        total_bytes += bytes_V[targets_BT.clamp(min=0)][counted_BT].sum().double()

    try:
        count = 0
        for index, batch in enumerate(batches):
            count += 1
            if index % world == rank:
                score(batch.input_ids, batch.targets, batch.document_ids)
        # Every rank runs ceil(count / world) forwards (see the module docstring): the short ones add a masked one.
        if rank >= count % world > 0:
            masked_11 = torch.full((1, 1), IGNORE_INDEX, dtype=torch.long)
            score(torch.zeros((1, 1), dtype=torch.long), masked_11, torch.zeros((1, 1), dtype=torch.long))
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
    """Held-out bits per byte of each capability group (every group with an eval set by default).

    Deterministic: the same model and arguments give the same figures (for a given world size).
    """
    names = list(shards.eval_groups) if groups is None else list(groups)
    unknown = [name for name in names if name not in shards.eval_groups]
    if unknown:
        raise LagoonError(f"no held-out set for capability group {unknown[0]!r}; the shard set has "
                          f"{', '.join(shards.eval_groups)}")
    device = device if device is not None else next(model.parameters()).device
    return {name: bits_per_byte(model, shards.eval_set(name).batches(seq_len, batch_size, max_tokens),
                                shards.token_bytes, device, autocast_dtype, group)
            for name in names}
