"""Claim: Muon keeps half of AdamW's optimizer state for matrix parameters (one tensor instead of two).

Builds lagoon's optimizer for each preset (on the meta device, so even Laguna M.1 needs no memory) with
``optim.name = "muon"`` and with ``"adamw"``, and adds up the bytes of the state tensors the optimizer
actually allocated: for the matrices Muon owns, and for the whole model.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import record
from lagoon.model import LagunaForCausalLM, preset_config
from lagoon.optim import OptimConfig, build_optimizer


def state_bytes(optimizer, names: set[str] | None) -> int:
    """Bytes of every state tensor of `optimizer` whose parameter name is in `names` (all when None)."""
    state = optimizer.state_dict()
    total = 0
    for section in ("muon", "adamw"):
        for name, entry in state[section].items():
            if names is None or name in names:
                total += sum(t.numel() * t.element_size() for t in entry.values())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "laguna-xs2", "laguna-m1"])
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    lines = ["| preset | matrix params | Muon state (matrices) | AdamW state (matrices) | ratio | whole model: Muon+AdamW | all-AdamW | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    gib = 2**30
    for preset in args.presets:
        with torch.device("meta"):
            model = LagunaForCausalLM(preset_config(preset))
        muon = build_optimizer(model, OptimConfig(name="muon"))
        adamw = build_optimizer(model, OptimConfig(name="adamw"))
        matrices = {m.name for m in muon.groups.muon}
        elements = sum(m.param.numel() for m in muon.groups.muon)
        ours, theirs = state_bytes(muon, matrices), state_bytes(adamw, matrices)
        whole_ours, whole_theirs = state_bytes(muon, None), state_bytes(adamw, None)
        lines.append(f"| {preset} | {elements / 1e9:.3f} B | {ours / gib:.3f} GiB | {theirs / gib:.3f} GiB | {ours / theirs:.3f} "
                     f"| {whole_ours / gib:.3f} GiB | {whole_theirs / gib:.3f} GiB | {whole_ours / whole_theirs:.3f} |")
        print(lines[-1], flush=True)
    if not args.no_record:
        record("Optimizer-state bytes, Muon vs AdamW (issue 4)", [
            "fp32 state tensors allocated by lagoon's optimizer (meta device), summed per parameter set.", "", *lines])


if __name__ == "__main__":
    main()
