"""Claim: decoding with lagoon's KV cache is at least 5× faster than full recomputation at 256 new tokens.

Greedy generation of 256 tokens after a 32-token prompt, batch 1, on the `tiny` and `small` presets
(random weights; end-of-sequence ignored so every run decodes exactly 256 tokens). The cached path is
`lagoon.infer.Engine`; the baseline is `lagoon.infer.reference.generate_without_cache`, which runs the
model over the whole sequence at every step. Both are timed round-robin in one process and must emit
the same tokens. Reported as decode tokens/s and the ratio.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import median, record
from benchmarks.infer_common import interleaved_clocks
from lagoon.infer import Engine, SamplingParams
from lagoon.infer.reference import generate_without_cache
from lagoon.model import LagunaForCausalLM, preset_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each path first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    lines = ["| preset | prompt + new | KV cache tok/CPU-s | recompute tok/CPU-s | speed-up (CPU) | speed-up (wall) |",
             "|---|---|---|---|---|---|"]
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
            outputs["recompute"] = generate_without_cache(model, prompt, params).token_ids

        times = interleaved_clocks({"cached": cached, "recompute": recompute}, rounds=args.rounds,
                                   warmup=args.warmup)
        assert outputs["cached"] == outputs["recompute"], "the cached and recomputed generations differ"
        fast, slow = (args.new_tokens / median(times[k]["cpu"]) for k in ("cached", "recompute"))
        wall = median(times["recompute"]["wall"]) / median(times["cached"]["wall"])
        lines.append(f"| {preset} | {args.prompt} + {args.new_tokens} | {fast:,.1f} | {slow:,.1f} | {fast / slow:.1f}× "
                     f"| {wall:.1f}× |")
        print(lines[-1], flush=True)
    lines.append("")
    lines.append(f"Goal ≥ 5×. Both paths produce identical tokens (asserted). {args.threads} torch thread(s); rates are "
                 "per CPU-second of this process (the machine is shared), the last column is the wall-clock ratio.")
    if not args.no_record:
        record("Decode with the KV cache vs full recomputation (issue 8: inference)", lines)


if __name__ == "__main__":
    main()
