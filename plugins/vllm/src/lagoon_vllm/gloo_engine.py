"""A ``gloo`` weight-transfer engine for vLLM's native RL weight-sync protocol (CPU trainers, CPU servers).

The control plane is vLLM's own (with ``VLLM_SERVER_DEV_MODE=1``): ``POST /init_weight_transfer_engine``
once, then per version ``/pause?mode=keep`` → ``/start_weight_update`` → ``/update_weights`` (answered
once every tensor has arrived, so the trainer sends while that request is open) →
``/finish_weight_update {"weight_version"}`` → ``/resume``. Only the data plane differs from vLLM's NCCL
engine: a torch.distributed gloo process group of its own (a TCPStore at the trainer's address, trainer
rank 0, workers from ``rank_offset``) instead of NCCL.

Wire format (the same packing as vLLM's packed NCCL transfer, `vllm.distributed.weight_transfer.packed_tensor`):
the tensors named in ``update_info`` (``names``, ``dtype_names``, ``shapes``, in that order) are flattened to
raw bytes and concatenated into uint8 chunks; a chunk is closed as soon as its size exceeds
``packed_buffer_size_bytes`` (so a chunk holds at least one tensor), and each chunk is one broadcast from
rank 0. The trainer side is `lagoon.weights.vllm` (lagoon's environment does not import vLLM).
Received tensors go to the model's ``load_weights`` inside vLLM's layerwise reload (started in
``start_weight_update``, finished in ``finish_weight_update``), as the NCCL engine does, so whatever vLLM
does after loading runs again. One exception on CPU, `lagoon_vllm.moe_reload`: vLLM 0.32's reload mis-packs
the CPU MoE kernels' expert weights (or fails outright when the expert width needs padding) and leaves the
router's correction bias as it was — its own ``reload_weights`` from a checkpoint path does the same — so the
expert tensors bypass it: the engine keeps them and packs them itself once the reload has finished.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from vllm.distributed.weight_transfer.base import (
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

BACKEND = "gloo"
DEFAULT_BUFFER_BYTES = 4 * 2**20    # gloo over loopback moved weights fastest in 1-8 MiB messages


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    """``init_info`` of ``/init_weight_transfer_engine`` for the gloo backend."""

    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    packed_buffer_size_bytes: int = DEFAULT_BUFFER_BYTES
    timeout_s: float = 600.0


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    """``update_info`` of ``/update_weights``: the tensors about to be broadcast, in order."""

    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.dtype_names) == len(self.shapes)):
            raise ValueError("names, dtype_names and shapes must have the same length")


def chunk_plan(sizes: list[int], buffer_bytes: int) -> list[list[int]]:
    """Indices of the tensors in each chunk: a chunk closes once its byte count exceeds `buffer_bytes`."""
    chunks: list[list[int]] = [[]]
    total = 0
    for index, size in enumerate(sizes):
        chunks[-1].append(index)
        total += size
        if total > buffer_bytes:
            chunks.append([])
            total = 0
    return [c for c in chunks if c]


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """Worker side: receive packed chunks by gloo broadcast and load them with the model's ``load_weights``."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group = None
        self.buffer_bytes = DEFAULT_BUFFER_BYTES
        self.experts: dict[str, torch.Tensor] = {}   # this update's expert tensors, for `moe_reload`
        from vllm.platforms import current_platform

        self.cpu = current_platform.is_cpu()

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        parallel = self.parallel_config
        rank = init_info.rank_offset + parallel.data_parallel_index * parallel.world_size + parallel.rank
        timeout = datetime.timedelta(seconds=init_info.timeout_s)
        store = dist.TCPStore(init_info.master_address, init_info.master_port, init_info.world_size,
                              is_master=False, timeout=timeout)
        self.group = dist.ProcessGroupGloo(dist.PrefixStore("lagoon-vllm-weights", store), rank,
                                           init_info.world_size, timeout)
        self.store = store      # the group's store must outlive it
        self.buffer_bytes = init_info.packed_buffer_size_bytes

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        self.experts = {}
        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        from lagoon_vllm.moe_reload import restore_moe_weights

        finalize_layerwise_reload(self.model, self.model_config)
        restore_moe_weights(self.model, self.experts)
        self.experts = {}

    def update_weights(self, update_info) -> None:
        # The base class also synchronizes an accelerator; on CPU there is none to wait for.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("the gloo weight transfer is not initialized; call /init_weight_transfer_engine first")
        dtypes = [getattr(torch, name) for name in update_info.dtype_names]
        sizes = [math.prod(shape) * dtype.itemsize for shape, dtype in zip(update_info.shapes, dtypes)]
        chunks = chunk_plan(sizes, self.buffer_bytes)
        options = dist.BroadcastOptions()
        options.rootRank = 0

        def post(chunk: list[int]):
            buffer = torch.empty(sum(sizes[i] for i in chunk), dtype=torch.uint8)
            return buffer, self.group.broadcast([buffer], options)

        pending = post(chunks[0]) if chunks else None
        for number, chunk in enumerate(chunks):
            buffer, work = pending
            work.wait()
            # Receive the next chunk while this one is loaded (gloo progresses on its own threads).
            pending = post(chunks[number + 1]) if number + 1 < len(chunks) else None
            pieces = buffer.split([sizes[i] for i in chunk])
            tensors = [(update_info.names[i], piece.view(dtypes[i]).view(update_info.shapes[i]))
                       for i, piece in zip(chunk, pieces)]
            if self.cpu:   # the MoE experts bypass vLLM's reload (`lagoon_vllm.moe_reload`)
                self.experts.update((name, t) for name, t in tensors if ".mlp.experts." in name)
                tensors = [(name, t) for name, t in tensors if ".mlp.experts." not in name]
            if tensors:
                self.model.load_weights(tensors)

    def shutdown(self) -> None:
        if self.group is not None:
            shutdown = getattr(self.group, "shutdown", None)
            if shutdown is not None:
                try:
                    shutdown()
                except RuntimeError:
                    pass
            self.group = None


def register_engine() -> None:
    """Add ``gloo`` to vLLM's weight-transfer engine registry (idempotent)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    if BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(BACKEND, GlooWeightTransferEngine)
