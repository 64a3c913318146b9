"""The supervised warm-up before RL: a tokenizer and a tiny policy that knows the task set's format.

RL can only improve what a policy sometimes does: a randomly initialized model never writes a code
block, so every reward is 0 and every group is filtered out. The warm-up trains the model (``[model]``,
usually the ``tiny`` preset) on correct transcripts of the task set (`lagoon.agent.arith.
supervised_examples`), tokenized exactly as the token-in/token-out harness tokenizes rollouts, with the
loss on the assistant's tokens only. Its tasks use their own seed, so the held-out evaluation and the RL
tasks never appear in it. A deliberately short warm-up leaves a policy that has the format but makes
mistakes, which is what RL then fixes.

With ``rl.init_checkpoint`` set (a pretrained lagoon or Hugging Face Laguna checkpoint), the warm-up
fine-tunes that model with its own tokenizer instead: the SFT stage between pretraining and RL.

It trains on the training engine (`lagoon.parallel.engine`) like pretraining and the RL trainer: the
``[parallel]`` layout, ``[optim]`` with ``[rl.optim]``'s keys replaced and the rate from ``rl.sft``, sharded
checkpoints. Under torchrun (``lagoon rl sft``; `lagoon rl` starts it so when ``rl.trainer.processes`` > 1)
each rank takes its share of every batch and the gradient is the global token-mean's.

Outputs (resumable: a finished warm-up is reused):

    RUN_DIR/sft/tokenizer/              byte-level BPE trained on the transcripts (from scratch only)
    RUN_DIR/sft/metrics.jsonl           step, loss, lr, tokens_per_s
    RUN_DIR/sft/checkpoints/step_N/     the checkpoint contract (lagoon.train.checkpoint), tokenizer included

Shape legend: B transcripts, T positions.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from lagoon.errors import LagoonError

# The arith-code levels the warm-up draws from (lagoon.agent.arith.LEVELS); tokenizer text covers them all.
TOKENIZER_EXAMPLES_PER_LEVEL = 500


def _transcripts(level: int, count: int, seed: int, tokenizer=None) -> list[dict]:
    from lagoon.agent.arith import supervised_examples

    return supervised_examples(count, level=level, seed=seed, tokenizer=tokenizer)


def build_tokenizer(directory: Path, seed: int, vocab_size: int) -> Path:
    """Train (once) a BPE tokenizer on rendered arith-code transcripts of every level."""
    from lagoon.agent.arith import LEVELS
    from lagoon.agent.tito import render
    from lagoon.data.tokenizer import save_tokenizer, train_tokenizer

    if (directory / "tokenizer.json").is_file():
        return directory
    texts = [render(e["messages"], False, False)
             for level in LEVELS for e in _transcripts(level, TOKENIZER_EXAMPLES_PER_LEVEL, seed + 7919)]
    staging = directory.with_name(directory.name + ".tmp")
    save_tokenizer(train_tokenizer(texts, vocab_size=vocab_size), staging)
    staging.replace(directory)
    return directory


def task_level(config) -> int:
    """The arith-code level of the run's task set (``arith-code:level=N``; 1 if not given)."""
    from lagoon.agent.tasks import _parse_options

    name, _, options = config.rl.tasks.task_set.partition(":")
    if name != "arith-code":
        raise LagoonError(f"the supervised warm-up knows arith-code transcripts only, not {name!r}; "
                          "set rl.sft.steps = 0 and give rl.init_checkpoint")
    return _parse_options(options, config.rl.tasks.task_set).get("level", 1)


def warmup(config, run_dir: Path, say=print) -> Path:
    """Run (or reuse) the warm-up; returns its final checkpoint directory (every rank, under torchrun)."""
    from lagoon.train import checkpoint as ckpt
    from lagoon.train.distributed import setup

    sft = config.rl.sft
    out = Path(run_dir) / "sft"
    final = ckpt.checkpoints_root(out) / ckpt.step_dir_name(sft.steps)
    if final.is_dir() and ckpt.verify(final) is None:
        return final
    dist_info = setup(config.rl.trainer.device)
    try:
        return _train(config, out, dist_info, say)
    finally:
        dist_info.close()


def _train(config, out: Path, dist_info, say) -> Path:
    import dataclasses

    from lagoon.configio import from_dict, to_dict
    from lagoon.infer.tokenizer import Tokenizer
    from lagoon.model import IGNORE_INDEX
    from lagoon.model.config import ModelConfig
    from lagoon.model.hf import read_config
    from lagoon.parallel.engine import Engine
    from lagoon.train import checkpoint as ckpt
    from lagoon.train.distributed import all_sum
    from lagoon.train.metrics import MetricsWriter
    from lagoon.train.rng import capture_rng

    sft = config.rl.sft
    rank, world = dist_info.rank, dist_info.world_size
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    init = config.rl.init_checkpoint
    if init:
        # Fine-tune a pretrained policy (its own tokenizer) on the transcripts: the SFT stage between
        # pretraining and RL.
        tokenizer_dir = Path(config.rl.tokenizer or init)
        model_config, source, origin = read_config(Path(init)), Path(init), f"from {init}"
    else:
        if dist_info.is_main:
            build_tokenizer(out / "tokenizer", sft.seed, config.model.vocab_size)
        dist_info.barrier()
        tokenizer_dir = out / "tokenizer"
        vocab = 64 * math.ceil(Tokenizer.from_dir(tokenizer_dir).vocab_size / 64)  # aligned head matmul
        model_config = from_dict(ModelConfig, {**to_dict(config.model), "vocab_size": vocab,
                                               "layer_types": None, "mlp_layer_types": None,
                                               "num_attention_heads_per_layer": None}, "model")
        source, origin = None, "from scratch"
    tokenizer = Tokenizer.from_dir(tokenizer_dir)
    optim = dataclasses.replace(config.rl.optim_config(config.optim), lr=sft.learning_rate, adamw_lr=sft.learning_rate)
    engine = Engine.build(model_config, config.parallel, optim, dist_info, source=source, seed=sft.seed)
    model, optimizer = engine.model, engine.optimizer
    level = task_level(config)
    examples = _transcripts(level, sft.num_examples, sft.seed, tokenizer)
    rows = [(torch.tensor(e["input_ids"]), torch.tensor(e["loss_mask"], dtype=torch.bool)) for e in examples]
    metrics = MetricsWriter(out, active=dist_info.is_main)
    metrics.resume_at(0)
    generator = torch.Generator().manual_seed(sft.seed)
    started = time.perf_counter()
    if dist_info.is_main:
        say(f"sft: {sft.steps} steps on {len(rows)} arith-code level-{level} transcripts, {origin}, "
            f"vocabulary {model.config.vocab_size}, {engine.dims.describe()}")
    device = dist_info.device
    for step in range(1, sft.steps + 1):
        # Linear warm-up, then cosine decay to 10% (a standard short-run schedule).
        progress = max(0.0, (step - sft.warmup_steps) / max(1, sft.steps - sft.warmup_steps))
        scale = min(1.0, step / max(1, sft.warmup_steps)) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        optimizer.set_lr_scale(scale)
        picked = torch.randint(len(rows), (sft.batch_size,), generator=generator).tolist()
        mine = picked[rank::world] or picked[:1]   # every rank runs one forward, even past the batch's end
        input_ids_BT, targets_BT = _batch([rows[i] for i in mine])
        if not picked[rank::world]:
            targets_BT.fill_(IGNORE_INDEX)
        step_started = time.perf_counter()
        count = float((targets_BT != IGNORE_INDEX).sum())
        (total,) = all_sum([count], dist_info, device)
        output = engine.wrapped(input_ids_BT.to(device), targets=targets_BT.to(device))
        # The global token-mean's gradient: this rank's share of the tokens, times W (ranks average gradients).
        share = count * world / max(total, 1.0)
        aux = sum(output.aux_losses.values(), torch.zeros((), device=device))
        (output.lm_loss * share + aux).backward()
        optimizer.step(max_grad_norm=1.0)
        optimizer.zero_grad()
        load = model.update_router_biases(dist_info.group)
        loss_sum, tokens = all_sum([float(output.lm_loss.detach()) * count, total], dist_info, device)
        loss = loss_sum / max(tokens, 1.0)
        metrics.write({"step": step, "loss": loss, "lr": sft.learning_rate * scale,
                       "tokens_per_s": input_ids_BT.numel() * world / (time.perf_counter() - step_started),
                       "trained_tokens": int(tokens), "elapsed_s": time.perf_counter() - started, **load})
        if (step % 50 == 0 or step == sft.steps) and dist_info.is_main:
            say(f"sft: step {step}/{sft.steps}  loss {loss:.3f}")
    metrics.close()
    state = ckpt.CheckpointState(step=sft.steps, tokens_seen=0, world_size=world, last_metrics={"loss": loss},
                                 config=to_dict(config))
    engine.save(out, state, {"examples": len(rows)}, capture_rng(), tokenizer_dir, keep_last=1)
    return ckpt.checkpoints_root(out) / ckpt.step_dir_name(sft.steps)


def _batch(rows: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded [B, T] inputs and shifted targets (IGNORE_INDEX off the assistant's tokens)."""
    from lagoon.model import IGNORE_INDEX
    from lagoon.tokens import PAD_ID

    T = max(len(ids) for ids, _ in rows)
    input_ids_BT = torch.full((len(rows), T), PAD_ID, dtype=torch.long)
    targets_BT = torch.full((len(rows), T), IGNORE_INDEX, dtype=torch.long)
    for b, (ids, mask) in enumerate(rows):
        n = len(ids)
        input_ids_BT[b, :n] = ids
        targets_BT[b, : n - 1] = torch.where(mask[1:], ids[1:], torch.full_like(ids[1:], IGNORE_INDEX))
    return input_ids_BT, targets_BT
