"""Claim: training with lagoon's Laguna is never slower than transformers' LagunaForCausalLM.

Forward+backward tokens/s of the `tiny` and `small` presets on CPU, lagoon vs the reference on the
same weights and batch, timed round-robin in one process. Reported as lagoon / transformers.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings

import torch

from benchmarks.common import interleaved, median, record
from lagoon.model import LagunaForCausalLM, preset_config, save_pretrained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    import transformers

    lines = ["| preset | batch × seq | lagoon tok/s | transformers tok/s | ratio |", "|---|---|---|---|---|"]
    for preset in args.presets:
        torch.manual_seed(0)
        model = LagunaForCausalLM(preset_config(preset))
        with tempfile.TemporaryDirectory() as directory:
            save_pretrained(model, directory)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reference = transformers.LagunaForCausalLM.from_pretrained(directory, dtype=torch.float32)
        model.train()
        reference.train()
        input_ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq))
        targets = torch.randint(0, model.config.vocab_size, (args.batch, args.seq))

        def step_lagoon():
            model.zero_grad(set_to_none=True)
            model(input_ids, targets=targets).loss.backward()

        def step_reference():
            reference.zero_grad(set_to_none=True)
            logits = reference(input_ids).logits
            torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()

        times = interleaved({"lagoon": step_lagoon, "transformers": step_reference}, rounds=args.rounds)
        tokens = args.batch * args.seq
        ours, theirs = tokens / median(times["lagoon"]), tokens / median(times["transformers"])
        lines.append(f"| {preset} | {args.batch} × {args.seq} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f}× |")
        print(lines[-1], flush=True)
    if not args.no_record:
        record("Model forward+backward throughput, lagoon vs transformers (issue: foundation)", lines)


if __name__ == "__main__":
    main()
