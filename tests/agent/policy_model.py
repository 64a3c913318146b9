"""A real Laguna checkpoint for harness integration tests: the tiny preset, trained for seconds until it
reproduces a few agent transcripts token for token, saved with its tokenizer in the checkpoint layout."""

from __future__ import annotations

from pathlib import Path

import torch


def train_checkpoint(out: Path, tokenizer_dir: Path, sequences: list[tuple[list[int], list[int]]],
                     vocab_size: int, steps: int = 400, lr: float = 1e-2) -> Path:
    """Fit `sequences` (input ids, loss mask) with the masked next-token loss and save the model to `out`."""
    from lagoon.config import load_config
    from lagoon.model import IGNORE_INDEX, LagunaForCausalLM, save_pretrained

    # Two layers, one dense and one MoE, 64 wide: a few hundred thousand parameters that fit the
    # transcripts in under a hundred steps.
    shape = ["model.num_hidden_layers=2", "model.num_dense_layers=1", "model.hidden_size=64",
             "model.num_attention_heads=2", "model.num_key_value_heads=1", "model.attention_heads_by_type={}",
             "model.intermediate_size=192", "model.num_experts=4", "model.num_experts_per_tok=2",
             "model.moe_intermediate_size=64", "model.shared_expert_intermediate_size=64", "model.sliding_window=512"]
    config = load_config(None, [f"model.vocab_size={vocab_size}", *shape], base={"model": {"preset": "tiny"}}).model
    torch.manual_seed(0)
    model = LagunaForCausalLM(config).train()
    length = max(len(ids) for ids, _ in sequences)
    inputs = torch.full((len(sequences), length), 9, dtype=torch.long)  # 9 = <pad>
    targets = torch.full((len(sequences), length), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, mask) in enumerate(sequences):
        inputs[row, : len(ids)] = torch.tensor(ids)
        for t in range(len(ids) - 1):
            if mask[t + 1]:
                targets[row, t] = ids[t + 1]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds synchronisation on a busy machine
    try:
        for _ in range(steps):
            loss = model(inputs, targets=targets).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.update_router_biases()
            if loss.item() < 2e-3:
                break
    finally:
        torch.set_num_threads(threads)
    assert loss.item() < 0.05, f"the test policy did not learn its transcripts (loss {loss.item():.3f})"
    return save_pretrained(model.eval(), out, tokenizer_dir=tokenizer_dir)


def completion_logprobs(checkpoint: Path, input_ids: list[int], loss_mask: list[int],
                        temperature: float = 1.0) -> list[float]:
    """log p(token | prefix) under the checkpoint, at `temperature`, for every masked-in position."""
    from lagoon.model import from_pretrained

    model = from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([input_ids])).logits[0].float()
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    return [logprobs[t - 1, input_ids[t]].item() for t in range(1, len(input_ids)) if loss_mask[t]]
