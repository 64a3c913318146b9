"""From groups of trajectories to packed training micro-batches.

Each trajectory becomes one (or, if its harness rewrote the context, several) token sequences
(`Trajectory.sequences`); every sampled token carries the trajectory's group-normalized advantage,
the sampler's logprob and the policy version that drew it. Sequences are packed into rows with
per-sequence document ids, so attention never crosses sequences and positions restart — every token is
scored in exactly the context it was sampled in — and rows into micro-batches of a bounded token count.

Alignment: position t of a row predicts token t+1, so the loss mask, sampler logprobs and advantages
of token t+1 sit at position t (the shifted layout `LagunaForCausalLM` uses for targets).

Shape legend: B rows, T positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lagoon.rl.advantages import group_advantages
from lagoon.rl.trajectory import Sequence, Trajectory
from lagoon.tokens import PAD_ID


@dataclass
class Sample:
    """One training sequence with its advantage."""

    sequence: Sequence
    advantage: float
    trajectory_id: str

    @property
    def tokens(self) -> int:
        return len(self.sequence.token_ids)


@dataclass
class MicroBatch:
    """Packed rows; every tensor is [B, T]."""

    input_ids: torch.Tensor
    document_ids: torch.Tensor
    loss_mask: torch.Tensor
    """True where the *next* token is a sampled token to train on."""
    sampler_logprobs: torch.Tensor
    """μ of the next token (0 where masked)."""
    advantages: torch.Tensor
    """Â of the next token's trajectory (0 where masked)."""
    policy_versions: torch.Tensor
    """Policy version that sampled the next token (-1 where masked)."""
    routed_experts: torch.Tensor | None = None
    """[B, T, layers, k] experts the rollout engine chose for the token *at* each position (not shifted:
    routing acts on the input token), −1 where none was recorded; None when no sequence recorded any."""

    @property
    def loss_tokens(self) -> int:
        return int(self.loss_mask.sum())


def samples_from_groups(groups: list[list[Trajectory]], std_normalize: bool = True) -> list[Sample]:
    """Group-normalized advantages, then one `Sample` per training sequence."""
    samples = []
    for group in groups:
        advantages = group_advantages([t.reward for t in group], std_normalize)
        for trajectory, advantage in zip(group, advantages):
            for sequence in trajectory.sequences():
                samples.append(Sample(sequence, advantage, trajectory.trajectory_id))
    return samples


def pack(samples: list[Sample], micro_batch_tokens: int, row_tokens: int = 512) -> list[MicroBatch]:
    """Pack samples into rows of at most `row_tokens` tokens (first-fit decreasing; a longer sequence gets a
    row of its own), then rows into micro-batches of at most `micro_batch_tokens` padded tokens.

    Short rows keep attention cheap: a packed row costs T² in attention whatever its document mask says,
    so several ~512-token rows beat one long row by far.
    """
    rows: list[list[Sample]] = []
    lengths: list[int] = []
    for sample in sorted(samples, key=lambda s: -s.tokens):
        for index, length in enumerate(lengths):
            if length + sample.tokens <= row_tokens:
                rows[index].append(sample)
                lengths[index] += sample.tokens
                break
        else:
            rows.append([sample])
            lengths.append(sample.tokens)
    batches: list[list[list[Sample]]] = []
    current: list[list[Sample]] = []
    width = 0
    for row, length in sorted(zip(rows, lengths), key=lambda pair: -pair[1]):
        if current and width * (len(current) + 1) > micro_batch_tokens:
            batches.append(current)
            current = []
        if not current:
            width = length          # rows come longest first: the first row sets the padded width
        current.append(row)
    if current:
        batches.append(current)
    return [_micro_batch(rows) for rows in batches]


def _micro_batch(rows: list[list[Sample]]) -> MicroBatch:
    built = [_row(row) for row in rows]
    T = max(len(r[0]) for r in built)
    pads = (PAD_ID, -1, False, 0.0, 0.0, -1)
    tensors = []
    for column, (pad, dtype) in enumerate(zip(pads, (torch.long, torch.long, torch.bool, torch.float32,
                                                     torch.float32, torch.long))):
        tensors.append(torch.tensor([r[column] + [pad] * (T - len(r[column])) for r in built], dtype=dtype))
    input_ids, document_ids, loss_mask, logprobs, advantages, versions = tensors
    # Padding gets a document id of its own, so no real token attends to it.
    document_ids = torch.where(document_ids < 0, document_ids.max() + 1, document_ids)
    return MicroBatch(input_ids, document_ids, loss_mask, logprobs, advantages, versions, _routes(rows, T))


def _routes(rows: list[list[Sample]], T: int) -> torch.Tensor | None:
    """[B, T, layers, k] recorded experts per position (−1: none), or None if no sequence has any."""
    import numpy as np

    shape = next((r.shape for row in rows for s in row for r in (s.sequence.routed_experts or []) if r is not None),
                 None)
    if shape is None:
        return None
    out = np.full((len(rows), T, *shape), -1, dtype=np.int16)
    for b, row in enumerate(rows):
        position = 0
        for sample in row:
            for offset, experts in enumerate(sample.sequence.routed_experts or []):
                if experts is not None:
                    out[b, position + offset] = experts
            position += sample.tokens
    return torch.from_numpy(out)


def _row(samples: list[Sample]) -> tuple[list, ...]:
    ids, docs, mask, logprobs, advantages, versions = [], [], [], [], [], []
    for doc, sample in enumerate(samples):
        s = sample.sequence
        n = len(s.token_ids)
        ids += s.token_ids
        docs += [doc] * n
        # Shift by one: position t carries what is known about token t+1 of the same sequence.
        mask += s.loss_mask[1:] + [False]
        logprobs += s.logprobs[1:] + [0.0]
        advantages += [sample.advantage if m else 0.0 for m in s.loss_mask[1:]] + [0.0]
        versions += s.policy_versions[1:] + [-1]
    assert not any(s.sequence.loss_mask[0] for s in samples), "a sequence starts with a prompt, not a sampled token"
    return ids, docs, mask, logprobs, advantages, versions
