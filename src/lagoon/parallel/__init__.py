"""The sharded training engine: one device mesh, parallelism applied to a plain model, sharded checkpoints.

    lagoon.parallel.config        [parallel]: dp_replicate × dp_shard, activation checkpointing, precision
    lagoon.parallel.mesh          ParallelDims (sizes from the world size) and the named DeviceMesh
    lagoon.parallel.parallelize   parallelize(model, mesh, config): checkpointing, then FSDP2 / HSDP
    lagoon.parallel.materialize   meta → local shards; layout-independent initialisation
    lagoon.parallel.load          fill from a Hugging Face directory or a sharded checkpoint, slice by slice
    lagoon.parallel.checkpoint    sharded checkpoints (torch.distributed.checkpoint + lagoon's manifest)
    lagoon.parallel.gather        full tensors one at a time on rank 0 (publishing, export)
    lagoon.parallel.export        a sharded checkpoint → Hugging Face files, tensor by tensor
    lagoon.parallel.engine        Engine: what pretraining, SFT and the RL trainer drive

The model files (`lagoon.model`) know nothing of this package (torchtitan's split).
"""

from lagoon.parallel.config import ParallelConfig

__all__ = ["ParallelConfig"]
