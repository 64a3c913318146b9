"""Claim: decoding with lagoon's KV cache is at least 5× faster than full recomputation at 256 new tokens.

Greedy generation of 256 tokens after a 32-token prompt, batch 1, on the `tiny` and `small` presets
(random weights; end-of-sequence ignored so every run decodes exactly 256 tokens). The cached path is
`lagoon.infer.Engine`; the baseline is recomputation done fairly: at every step the decoder runs over the
whole sequence so far, but the LM head only over the last position (`recompute_last_position`) — the
work a cache-free decoder must do, no more. (`lagoon.infer.reference.generate_without_cache`, the
correctness oracle, computes logits for every position and keeps the last.) Both paths run with the same
torch thread count in one process, round-robin with the order alternating, after an untimed warm-up of
each, and must emit the same tokens. Reported as decode tokens per CPU-second and per wall-second, with
the per-round ratio's median and range.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import median, ratios, record, spread, table_row
from benchmarks.infer_common import interleaved_clocks
from lagoon.infer import Engine, SamplingParams
from lagoon.model import LagunaForCausalLM, preset_config

GOAL = 5.0


@torch.no_grad()
def recompute_last_position(model: LagunaForCausalLM, prompt: list[int], new_tokens: int) -> list[int]:
    """Greedy decoding without a cache: the decoder over the whole sequence at every step, the LM head
    over its last position only."""
    sequence = list(prompt)
    for _ in range(new_tokens):
        hidden_1TD = model(torch.tensor([sequence]), return_logits=False, return_hidden_states=True).hidden_states
        logits_1V = model.lm_head(hidden_1TD[:, -1])
        sequence.append(int(logits_1V.argmax(dim=-1)))
    return sequence[len(prompt):]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each path first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lines = ["| preset | prompt + new | KV cache tok/CPU-s | recompute tok/CPU-s | speed-up (CPU) | speed-up (wall) |",
             "|---|---|---|---|---|---|"]
    figures = {}
    for preset in args.presets:
        torch.manual_seed(0)
        model = LagunaForCausalLM(preset_config(preset)).eval()
        prompt = [2] + torch.randint(32, model.config.vocab_size, (args.prompt - 1,)).tolist()
        params = SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
        engine = Engine(model, max_batch=1)
        outputs = {}

        def cached():
            outputs["cached"] = engine.generate(prompt, params)[0].token_ids

        def recompute():
            outputs["recompute"] = recompute_last_position(model, prompt, args.new_tokens)

        times = interleaved_clocks({"cached": cached, "recompute": recompute}, rounds=args.rounds,
                                   warmup=args.warmup)
        assert outputs["cached"] == outputs["recompute"], "the cached and recomputed generations differ"
        fast, slow = ([args.new_tokens / s for s in times[k]["cpu"]] for k in ("cached", "recompute"))
        cpu = ratios(times["recompute"]["cpu"], times["cached"]["cpu"])
        wall = ratios(times["recompute"]["wall"], times["cached"]["wall"])
        figures[preset] = (cpu, wall)
        lines.append(f"| {preset} | {args.prompt} + {args.new_tokens} | {spread(fast, '{:,.1f}')} | "
                     f"{spread(slow, '{:,.1f}')} | {spread(cpu, '{:.1f}', '×')} | {spread(wall, '{:.1f}', '×')} |")
        print(lines[-1], flush=True)
    hits = [median(cpu) >= GOAL for cpu, _ in figures.values()]
    status = "met" if all(hits) else "missed" if not any(hits) else ", ".join(
        f"{preset} {'met' if median(cpu) >= GOAL else 'missed'}" for preset, (cpu, _) in figures.items())
    lines += ["", f"Goal ≥ {GOAL:g}×. Both paths produce identical tokens (asserted). {args.threads} torch thread(s); "
                  f"{args.rounds} rounds after {args.warmup} warm-up run(s) of each; values are median (min–max) over "
                  "rounds; CPU rates are per CPU-second of this process, the last column is the wall-clock ratio.", "",
              table_row("infer_kv_cache", f"≥ {GOAL:g}×", ", ".join(
                  f"{preset} {spread(cpu, '{:.1f}', '×')}" for preset, (cpu, _) in figures.items()) + " (CPU time)",
                  status)]
    print("\n".join(lines[-3:]))
    if not args.no_record:
        record("Decode with the KV cache vs last-position recomputation (issue 21)", lines)


if __name__ == "__main__":
    main()
