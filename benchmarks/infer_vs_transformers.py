"""Claim: lagoon's engine generates at least as fast as transformers' ``LagunaForCausalLM.generate``.

Same weights (a lagoon checkpoint loaded by both), same prompts (equal lengths, so transformers needs no
padding), greedy decoding of a fixed number of new tokens at batch 1 and 8, at the same torch thread
count (1 by default), timed round-robin in one process with the order alternating, after an untimed
warm-up of each. Both must produce identical tokens. Reported as generated tokens per CPU-second and the
per-round ratio lagoon ÷ transformers (median and range over rounds), in CPU time and in wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings

import torch

from benchmarks.common import median, ratios, record, spread, table_row
from benchmarks.infer_common import interleaved_clocks
from lagoon.infer import Engine, SamplingParams
from lagoon.model import LagunaForCausalLM, preset_config, save_pretrained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each path first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    lines = ["| preset | batch | prompt + new | lagoon tok/CPU-s | transformers tok/CPU-s | ratio (CPU) "
             "| ratio (wall) |", "|---|---|---|---|---|---|---|"]
    figures = {}
    for preset in args.presets:
        torch.manual_seed(0)
        model = LagunaForCausalLM(preset_config(preset)).eval()
        with tempfile.TemporaryDirectory() as directory:
            save_pretrained(model, directory)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reference = transformers.LagunaForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        for batch in args.batches:
            vocab = model.config.vocab_size
            prompts = [[2] + torch.randint(32, vocab, (args.prompt - 1,)).tolist() for _ in range(batch)]
            engine = Engine(model, max_batch=batch)
            params = SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
            outputs = {}

            def run_lagoon():
                outputs["lagoon"] = [c.token_ids for c in engine.generate(prompts, params)]

            def run_transformers():
                with torch.no_grad():
                    out = reference.generate(torch.tensor(prompts), attention_mask=torch.ones(batch, args.prompt).long(),
                                             max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                             do_sample=False, pad_token_id=9)
                outputs["transformers"] = out[:, args.prompt:].tolist()

            times = interleaved_clocks({"lagoon": run_lagoon, "transformers": run_transformers},
                                       rounds=args.rounds, warmup=args.warmup)
            assert outputs["lagoon"] == outputs["transformers"], "lagoon and transformers generated different tokens"
            tokens = batch * args.new_tokens
            ours, theirs = ([tokens / s for s in times[k]["cpu"]] for k in ("lagoon", "transformers"))
            cpu = ratios(times["transformers"]["cpu"], times["lagoon"]["cpu"])
            wall = ratios(times["transformers"]["wall"], times["lagoon"]["wall"])
            figures[(preset, batch)] = cpu
            lines.append(f"| {preset} | {batch} | {args.prompt} + {args.new_tokens} | {spread(ours, '{:,.1f}')} | "
                         f"{spread(theirs, '{:,.1f}')} | {spread(cpu, '{:.2f}', '×')} | {spread(wall, '{:.2f}', '×')} |")
            print(lines[-1], flush=True)
    hits = [median(cpu) >= 1.0 for cpu in figures.values()]
    lines += ["", f"Goal ≥ 1.0×. Greedy outputs are identical token for token (asserted). {args.threads} torch "
                  f"thread(s); {args.rounds} rounds after {args.warmup} warm-up run(s) of each; values are median "
                  "(min–max) over rounds; rates are per CPU-second of this process, the last column is the wall-clock "
                  "ratio.", "",
              table_row("infer_vs_transformers", "≥ 1.0×", ", ".join(
                  f"{preset} b{batch} {spread(cpu, '{:.2f}', '×')}" for (preset, batch), cpu in figures.items())
                  + " per CPU-s", "met" if all(hits) else "missed" if not any(hits) else
                  f"met for {sum(hits)} of {len(hits)}")]
    print(lines[-1])
    if not args.no_record:
        record("lagoon engine vs transformers generate (issue 21)", lines)


if __name__ == "__main__":
    main()
