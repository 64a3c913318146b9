"""Which rank orthogonalizes which matrix, and how matrices travel in buckets.

Every Muon matrix — a 2-D weight, or one expert's matrix inside a 3-D stack — is a `Block`, owned by
exactly one data-parallel rank. Owners are chosen by longest-processing-time first (Graham 1969): blocks
sorted by Newton–Schulz cost, largest first, each to the rank with the least cost so far. The cost of a
P×Q matrix (P ≤ Q) is its Newton–Schulz FLOPs, ∝ P²Q, not its element count: a square matrix costs more
than a wide one with the same number of elements.

A `Bucket` is the unit of communication and of batched Newton–Schulz: blocks of one shape, laid out as W
owner segments of M block slots each (M = the most blocks any rank owns in the bucket; shorter segments
are zero-padded), so one equal-split collective moves it and each owner orthogonalizes its segment
[m_r, R, C] in one batched call.

Shape legend: W ranks, M block slots per owner segment, R×C one matrix (fan_out × fan_in).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from lagoon.optim.grouping import MatrixParam
from lagoon.optim.newton_schulz import newton_schulz_flops


@dataclass(frozen=True)
class Block:
    """Matrix `index` of Muon parameter `param` (its position in the Muon group)."""

    param: int
    index: int
    rows: int
    cols: int

    @property
    def cost(self) -> int:
        return newton_schulz_flops(self.rows, self.cols, 1)


def blocks_of(matrices: list[MatrixParam]) -> list[Block]:
    """Every matrix of every Muon parameter, in model order."""
    return [Block(p, i, m.rows, m.cols) for p, m in enumerate(matrices) for i in range(m.count)]


def assign_owners(blocks: list[Block], world_size: int, fixed: dict[Block, int] | None = None) -> dict[Block, int]:
    """Longest-processing-time assignment of `blocks` to ranks; `fixed` blocks keep their rank (and load).

    Deterministic: ties go to the lower block position and the lower rank, so every rank computes the
    same owners from the same model.
    """
    fixed = fixed or {}
    load = [0] * world_size
    owners: dict[Block, int] = {}
    for block, rank in fixed.items():
        owners[block] = rank
        load[rank] += block.cost
    position = {block: i for i, block in enumerate(blocks)}
    for block in sorted((b for b in blocks if b not in fixed), key=lambda b: (-b.cost, position[b])):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owners[block] = rank
        load[rank] += block.cost
    return owners


def load_per_rank(owners: dict[Block, int], world_size: int) -> list[int]:
    """Newton–Schulz cost each rank carries."""
    load = [0] * world_size
    for block, rank in owners.items():
        load[rank] += block.cost
    return load


def imbalance(loads: list[float]) -> float:
    """max / mean (1.0 is perfect balance)."""
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean > 0 else 1.0


@dataclass
class Bucket:
    """Blocks of one R×C shape in W owner segments of M slots."""

    rows: int
    cols: int
    segments: list[list[Block]]
    """segments[r]: the blocks rank r owns in this bucket, in model order."""
    slots: int = field(init=False)
    """M: the longest segment (every segment is padded to it)."""

    def __post_init__(self) -> None:
        self.slots = max(len(s) for s in self.segments)

    @property
    def world_size(self) -> int:
        return len(self.segments)

    @property
    def matrix_elements(self) -> int:
        return self.rows * self.cols

    @property
    def padded_elements(self) -> int:
        """Elements of the whole padded bucket, W·M·R·C."""
        return self.world_size * self.slots * self.matrix_elements

    def slot_index(self) -> dict[Block, int]:
        """Position of each block in the flattened [W·M] slot axis."""
        return {block: rank * self.slots + i for rank, segment in enumerate(self.segments) for i, block in enumerate(segment)}

    def per_param(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """For each Muon parameter with blocks here: (its block indices, their slots in [W·M])."""
        found: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        for block, slot in self.slot_index().items():
            found[block.param][0].append(block.index)
            found[block.param][1].append(slot)
        return {p: (torch.tensor(i, dtype=torch.long), torch.tensor(s, dtype=torch.long)) for p, (i, s) in sorted(found.items())}


def make_buckets(blocks: list[Block], owners: dict[Block, int], world_size: int, bucket_bytes: float,
                 element_bytes: int = 4) -> list[Bucket]:
    """Group same-shape blocks into buckets of about `bucket_bytes`, smallest bucket first.

    Each bucket holds up to m blocks per owner, m = ⌊bucket_bytes / (W·R·C·element_bytes)⌋ ≥ 1, so a
    bucket's padded size stays near the target whatever the shape. Sorting by size puts small buckets
    first: their collectives finish soon, and Newton–Schulz starts while the big ones are in flight.
    """
    by_shape: dict[tuple[int, int], list[list[Block]]] = {}
    for block in blocks:
        segments = by_shape.setdefault((block.rows, block.cols), [[] for _ in range(world_size)])
        segments[owners[block]].append(block)
    buckets = []
    for (rows, cols), segments in by_shape.items():
        per_owner = max(1, int(bucket_bytes // (world_size * rows * cols * element_bytes)))
        longest = max(len(s) for s in segments)
        for start in range(0, longest, per_owner):
            buckets.append(Bucket(rows, cols, [s[start : start + per_owner] for s in segments]))
    buckets.sort(key=lambda b: b.padded_elements)  # stable: ties keep model order
    return buckets


def shard_rows(rows: int, world_size: int, rank: int) -> tuple[int, int]:
    """Rows [start, stop) of rank `rank` under dim-0 sharding (torch.chunk sizes, as FSDP2's Shard(0))."""
    size = math.ceil(rows / world_size)
    return min(rank * size, rows), min((rank + 1) * size, rows)
