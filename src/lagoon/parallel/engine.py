"""The training engine every trainer drives: pretraining (`lagoon train`), the SFT warm-up and the RL trainer.

    engine = Engine.build(model_config, config.parallel, config.optim, dist_info, source=None, seed=0)
    for micro, last in ...:
        with engine.micro_batch(last), engine.autocast():
            loss = engine.forward(...).loss
        loss.backward()
    metrics = engine.optimizer.step(max_grad_norm=1.0)
    engine.save(run_dir, state, loader_state, tokenizer_dir, keep_last)   # collective, sharded
    engine.load(path)                                                     # any layout resumes any other

Building: the model is constructed on the meta device, `parallelize` applies checkpointing and FSDP2/HSDP,
`materialize` allocates only the local shards, then the weights are initialised (the same values in every
layout) or loaded slice by slice (`lagoon.parallel.load`). The optimizer follows the layout:

    layout                    optimizer                              gradient reduction
    single process            Muon + AdamW                           —
    ddp   (dp_shard = 1)      optim.distributed = "none": replicated   DDP all-reduce
                              optim.distributed = "ddp": distributed   reduce-scatter to Muon's owners
    fsdp / hsdp               distributed Muon, ``fsdp2`` mode over    FSDP2 reduce-scatter within the shard
                              the shard group (owners within it)       group, all-reduce across replicas
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lagoon.errors import ConfigError
from lagoon.parallel.config import ParallelConfig
from lagoon.parallel.mesh import Mesh, ParallelDims, build_mesh
from lagoon.parallel.parallelize import is_sharded, parallelize


def optimizer_mode(dims: ParallelDims, distributed: str) -> str:
    """The optimizer's ``distributed`` mode for a layout (see the module docstring)."""
    if dims.sharded:
        return "fsdp2"
    if distributed == "fsdp2":
        raise ConfigError("optim.distributed", "\"fsdp2\" is chosen by the layout now: set parallel.dp_shard = -1 "
                                               "(and parallel.dp_replicate = 1) to shard parameters with FSDP2")
    return distributed if dims.world_size > 1 else "none"


@dataclass
class Engine:
    """One rank's share of a data-parallel training job: mesh, model, optimizer and the module to call."""

    parallel: ParallelConfig
    dims: ParallelDims
    mesh: Mesh
    dist: Any
    """The rank's `lagoon.train.distributed.Distributed` (device, rank, world group)."""
    model: nn.Module
    optimizer: Any
    wrapped: nn.Module
    """What the loop calls: the model, or its DDP wrapper in a replicated layout with a replicated optimizer."""

    @classmethod
    def build(cls, model_config: Any, parallel: ParallelConfig, optim: Any, dist_info: Any,
              source: Path | None = None, seed: int | None = None, initialize: bool = True) -> "Engine":
        """Meta construction → parallelize → materialize → initialise (seeded) or load `source`. With
        ``initialize = False`` the weights are left unset (the caller loads a checkpoint with `load`)."""
        from lagoon.model import LagunaForCausalLM
        from lagoon.optim import DataParallel, build_optimizer
        from lagoon.parallel.load import load_weights
        from lagoon.parallel.materialize import init_parameters, materialize

        dims = ParallelDims.resolve(parallel, dist_info.world_size)
        mode = optimizer_mode(dims, optim.distributed)
        mesh = build_mesh(dims, dist_info.device.type)
        with torch.device("meta"):
            model = LagunaForCausalLM(model_config)
        parallelize(model, mesh, parallel)
        materialize(model, dist_info.device)
        if source is not None:
            load_weights(model, source, distributed=is_sharded(model))
        elif initialize:
            if seed is not None:
                torch.manual_seed(seed)
            init_parameters(model)
        model.train()
        if dims.sharded:
            data_parallel = DataParallel.from_group(mesh.shard_group)
        else:
            data_parallel = DataParallel.from_group(dist_info.group) if dims.world_size > 1 else None
        optimizer = build_optimizer(model, dataclasses.replace(optim, distributed=mode), data_parallel=data_parallel)
        wrapped: nn.Module = model
        if dims.layout == "ddp" and not optimizer.reduces_gradients:
            from torch.nn.parallel import DistributedDataParallel

            device = dist_info.device
            wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                              process_group=dist_info.group, forward_sync_buffers=False)
        return cls(parallel, dims, mesh, dist_info, model, optimizer, wrapped)

    # ----------------------------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        return self.dims.sharded

    def micro_batch(self, last: bool):
        """Gradient synchronisation only on the last micro-batch of a step (DDP no_sync; FSDP2 defers its
        reduce-scatter and keeps the unsharded gradients until then)."""
        if self.sharded:
            self.model.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        if last or self.wrapped is self.model:
            return contextlib.nullcontext()
        return self.wrapped.no_sync()

    # ----------------------------------------------------------------------------------------------
    def save(self, run_dir: Path, state: Any, loader_state: dict[str, Any], rng_state: dict[str, Any],
             tokenizer_dir: Path | None, keep_last: int) -> Path | None:
        """A sharded checkpoint of model and optimizer (collective); the path on rank 0."""
        from lagoon.parallel import checkpoint

        return checkpoint.save(Path(run_dir), self.model, self.optimizer, state, loader_state, rng_state,
                               tokenizer_dir, keep_last, rank=self.dist.rank, group=self.dist.group)

    def load(self, path: Path, with_optimizer: bool = True) -> None:
        """Model (and optimizer) state from checkpoint `path`, whatever layout wrote it (collective)."""
        from lagoon.parallel import checkpoint

        checkpoint.load(Path(path), self.model, self.optimizer if with_optimizer else None,
                        distributed=self.dist.group is not None)

    def state_bytes(self) -> dict[str, int]:
        """Bytes this rank holds of parameters, gradients (as they are now) and optimizer state."""
        from lagoon.parallel.materialize import local_part

        def size(tensor: torch.Tensor) -> int:
            local = local_part(tensor)
            return local.numel() * local.element_size()

        params = [p for p in self.model.parameters()]
        optimizer = self.optimizer
        if hasattr(optimizer, "owned_state_elements"):   # distributed Muon: its owned momenta and AdamW shard
            state = optimizer.owned_state_elements() * 4
        else:
            state = sum(size(t) for table in (optimizer.momentum, optimizer.exp_avg, optimizer.exp_avg_sq)
                        for t in table.values())
        return {"params": sum(size(p) for p in params), "grads": sum(size(p.grad) for p in params if p.grad is not None),
                "optimizer": state}

    def full_tensors(self, dtype: torch.dtype | None = None):
        """(name, full tensor on rank 0) one at a time (`lagoon.parallel.gather`; collective when sharded)."""
        from lagoon.parallel.gather import full_tensors

        return full_tensors(self.model, dtype, self.mesh if self.sharded else None)

    def unsharded_copy(self) -> nn.Module:
        """A plain copy of the model on every rank, for work that must not run FSDP2 collectives (each rank
        evaluating its own batches); the model itself in replicated layouts."""
        if not self.sharded:
            return self.model
        from lagoon.optim.fsdp import unsharded_copy

        return unsharded_copy(self.model)
