"""`lagoon plan`: per-rank memory of a training job before anyone books GPUs.

    lagoon plan configs/scale/laguna_xs2_rl.toml --gpus 8 --gpu-memory-gb 80 --role rl

For the layout the config's ``[parallel]`` section gives on the training ranks, per rank:

- **parameters**: fp32 master weights, this rank's shard of every parameter (dim-0 rows, the largest shard);
- **gradients**: the same shapes (FSDP2 reduce-scatters them to the shard; DDP keeps them whole);
- **optimizer**: Muon's momentum (one fp32 tensor per matrix) and AdamW's two moments, divided over the
  shard group (FSDP2), over every rank (distributed Muon's ``ddp`` mode), or whole (a replicated optimizer);
- **gathered blocks** (sharded layouts): the all-gathered parameters of two decoder blocks in ``param_dtype``
  (the one computing and the one prefetched) and one block's unsharded gradients;
- **activations**: what autograd keeps for the backward pass at the micro-batch and sequence length,
  with and without activation checkpointing. The count follows lagoon's layer code op by op (see
  `layer_activation_bytes`): norms keep their fp32 input and normalised output, linears their inputs,
  SiLU/softplus/products their operands, flash-style attention q, k, v, its output and the log-sum-exp,
  the MoE its gathered tokens, expert hidden states and routing weights, the LM head fp32 logits and
  log-probabilities. Checkpointed blocks keep only their input, plus one block's activations while it
  is recomputed.

It also finds the largest micro-batch that fits, and for ``--role rl`` splits the GPUs between trainer
ranks and inference servers (``rl.trainer.processes`` and ``rl.servers.count``; a server holds the model in
bf16 plus its KV cache budget). The figures are checked against memory measured on CPU at small shapes
(`tests/parallel/test_plan.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


@dataclass
class RankMemory:
    """Bytes one training rank holds."""

    params: int
    grads: int
    optimizer: int
    gathered: int
    activations: int
    """At the configured activation checkpointing."""
    activations_none: int
    activations_full: int

    @property
    def state(self) -> int:
        return self.params + self.grads + self.optimizer

    @property
    def total(self) -> int:
        return self.state + self.gathered + self.activations


def _shard(shape: tuple[int, ...], shards: int) -> int:
    """Elements of the largest dim-0 shard (torch.chunk sizes, as FSDP2's Shard(0))."""
    rest = math.prod(shape[1:])
    return math.ceil(shape[0] / shards) * rest if shape else 1


def state_bytes(model_config: Any, optim: Any, dp_shard: int, world_size: int, distributed: str) -> tuple[int, int, int]:
    """(parameters, gradients, optimizer) bytes on the busiest rank."""
    import torch

    from lagoon.model import LagunaForCausalLM
    from lagoon.optim.grouping import group_parameters

    with torch.device("meta"):
        model = LagunaForCausalLM(model_config)
    groups = group_parameters(model, optim)
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    params = grads = 0
    for param in model.parameters():
        elements = _shard(tuple(param.shape), dp_shard) if id(param) not in frozen else param.numel()
        params += 4 * elements
        grads += 4 * elements if id(param) not in frozen else 0
    muon = sum(m.param.numel() for m in groups.muon)
    adamw = sum(p.numel() for _, p in groups.adamw + groups.adamw_no_decay)
    if dp_shard > 1:
        optimizer = 4 * (math.ceil(muon / dp_shard) + 2 * sum(_shard(tuple(p.shape), dp_shard)
                                                              for _, p in groups.adamw + groups.adamw_no_decay))
    elif distributed == "ddp" and world_size > 1:
        optimizer = 4 * (math.ceil(muon / world_size) + 2 * math.ceil(adamw / world_size))
    else:
        optimizer = 4 * (muon + 2 * adamw)
    return params, grads, optimizer


def layer_activation_bytes(config: Any, layer: int, tokens: int, compute_bytes: int) -> int:
    """Bytes autograd keeps for decoder layer `layer` over `tokens` tokens (lagoon.model.layers / moe)."""
    p, D = compute_bytes, config.hidden_size
    hd = config.head_dim
    H = config.num_attention_heads_per_layer[layer] if config.num_attention_heads_per_layer else config.num_attention_heads
    K = config.num_key_value_heads
    N = tokens
    norm = lambda width: N * width * (4 + p) + N * 4  # noqa: E731  fp32 input, normalised output, rsqrt
    total = 2 * norm(D) + 2 * N * D * p               # the two norms; their gained outputs (attention, MLP inputs)
    total += norm(H * hd) + norm(K * hd)              # q_norm, k_norm
    total += 2 * N * hd * p                           # rotary cos and sin (shared by the layers of a type)
    total += N * (2 * H + 2 * K) * hd * p + N * H * 4  # attention: q, k, v, output, log-sum-exp
    gate = H if config.gate_per_head else H * hd
    total += N * gate * (4 + p)                       # the output gate: softplus input (fp32), cast output
    total += N * H * hd * p                           # o_proj's input
    if config.mlp_layer_types[layer] == "dense":
        total += 4 * N * config.intermediate_size * p  # gate, SiLU(gate), up, product (down_proj's input)
    else:
        E, k, F_ = config.num_experts, config.num_experts_per_tok, config.moe_intermediate_size
        M = N * k
        total += N * E * 4 + N * k * 16 + N * 4        # router scores (fp32), top-k ids and weights, their sum
        total += 2 * M * 8 + 3 * M * D * p + M * 4     # sort order, token ids; gathered tokens, expert outputs,
        total += M * 2 * F_ * p + 2 * M * F_ * p       # weighted outputs; routing weights; [M, 2F]; SiLU, product
        total += 4 * N * config.shared_expert_intermediate_size * p
    return total


def activation_bytes(config: Any, micro_batch: int, seq_len: int, compute_bytes: int, mode: str) -> int:
    """Activation bytes of one micro-batch at checkpointing `mode` (none | selective | full)."""
    from lagoon.parallel.parallelize import checkpointed_blocks

    N = micro_batch * seq_len
    layers = [layer_activation_bytes(config, i, N, compute_bytes) for i in range(config.num_hidden_layers)]
    chosen = set(checkpointed_blocks(config.num_hidden_layers, mode))
    kept = sum(N * config.hidden_size * compute_bytes if i in chosen else layers[i] for i in range(len(layers)))
    recompute = max((layers[i] for i in chosen), default=0)   # one checkpointed block re-runs at a time
    V, D = config.vocab_size, config.hidden_size
    if "sliding_attention" in config.layer_types:   # the additive sliding-window mask [1, 1, T, T], fp32, shared
        kept += seq_len * seq_len * 4
    head = N * D * (4 + compute_bytes) + N * 4 + N * D * compute_bytes + N * V * 4   # final norm, head input,
    return kept + recompute + head + N * 8                                          # log-probs; positions


def plan(config: Any, gpus: int, gpu_memory_gb: float, role: str = "pretrain") -> dict[str, Any]:
    """The per-rank figures `lagoon plan` prints (see the module docstring)."""
    from lagoon.parallel.mesh import ParallelDims

    if gpus < 1:
        raise ValueError("--gpus must be at least 1")
    budget = int(gpu_memory_gb * GIB)
    model = config.model
    servers = 0
    optim = config.optim
    if role == "rl":
        servers = len(config.rl.servers.urls) or config.rl.servers.count
        trainers = config.rl.trainer.processes
        if trainers + servers > gpus:
            raise ValueError(f"rl.trainer.processes ({trainers}) + rl.servers.count ({servers}) need {trainers + servers} "
                             f"GPUs, the plan has {gpus}")
        optim = config.rl.optim_config(config.optim)
        micro_batch, seq_len = 1, config.rl.trainer.micro_batch_tokens
    else:
        trainers = gpus
        micro_batch = config.data.global_batch_size // gpus // config.train.grad_accum
        seq_len = config.data.seq_len
    dims = ParallelDims.resolve(config.parallel, trainers)
    compute = DTYPE_BYTES[config.parallel.param_dtype] if dims.sharded else (
        2 if config.train.dtype in ("bfloat16", "auto") else 4)
    params, grads, state = state_bytes(model, optim, dims.dp_shard, trainers, optim.distributed)
    gathered = 0
    if dims.sharded:
        largest = max(_block_elements(model, i) for i in range(model.num_hidden_layers))
        gathered = largest * (2 * compute + 4)
    modes = {mode: activation_bytes(model, micro_batch, seq_len, compute, mode) for mode in ("none", "selective", "full")}
    memory = RankMemory(params, grads, state, gathered, modes[config.parallel.activation_checkpointing],
                        modes["none"], modes["full"])
    fits = []
    for mode in ("none", "selective", "full"):
        largest_fit = 0
        per_sequence = activation_bytes(model, 1, seq_len, compute, mode)
        if per_sequence > 0:
            largest_fit = max(0, (budget - memory.state - gathered) // per_sequence)
        fits.append((mode, int(largest_fit)))
    server = 2 * sum(p.numel() for p in _meta_model(model).parameters()) if role == "rl" else 0
    return {"layout": dims.describe(), "trainer_ranks": trainers, "inference_servers": servers,
            "micro_batch": micro_batch, "seq_len": seq_len, "memory": memory, "largest_micro_batch": dict(fits),
            "budget": budget, "server_weights": server}


def _meta_model(model_config: Any):
    import torch

    from lagoon.model import LagunaForCausalLM

    with torch.device("meta"):
        return LagunaForCausalLM(model_config)


def _block_elements(model_config: Any, layer: int) -> int:
    from lagoon.model.transformer import DecoderLayer

    import torch

    with torch.device("meta"):
        block = DecoderLayer(model_config, layer)
    return sum(p.numel() for p in block.parameters())


def render(result: dict[str, Any]) -> str:
    """The report `lagoon plan` prints."""
    memory: RankMemory = result["memory"]

    def gib(value: int) -> str:
        return f"{value / GIB:8.2f} GiB"

    lines = [f"layout: {result['layout']} on {result['trainer_ranks']} trainer rank(s)"
             + (f", {result['inference_servers']} inference server(s)" if result["inference_servers"] else ""),
             f"micro-batch {result['micro_batch']} × {result['seq_len']} tokens; per trainer rank:",
             f"  parameters (fp32 master)   {gib(memory.params)}",
             f"  gradients                  {gib(memory.grads)}",
             f"  optimizer state            {gib(memory.optimizer)}",
             f"  gathered blocks            {gib(memory.gathered)}",
             f"  activations, none          {gib(memory.activations_none)}",
             f"  activations, full ckpt     {gib(memory.activations_full)}",
             f"  total (configured ckpt)    {gib(memory.total)}   of {gib(result['budget'])}"
             + ("   FITS" if memory.total <= result["budget"] else "   DOES NOT FIT"),
             "largest micro-batch that fits: " + ", ".join(f"{mode} {n}" for mode, n in result["largest_micro_batch"].items())]
    if result["server_weights"]:
        lines.append(f"inference server: bf16 weights {gib(result['server_weights'])} "
                     f"(+ KV cache) of {gib(result['budget'])}")
    return "\n".join(lines)
