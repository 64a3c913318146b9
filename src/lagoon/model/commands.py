"""``lagoon model info``, ``lagoon export hf`` and ``lagoon import hf``."""

from __future__ import annotations

import argparse
from pathlib import Path

from lagoon.errors import LagoonError


def register(subparsers) -> None:
    model = subparsers.add_parser("model", help="inspect model shapes")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    info = model_sub.add_parser("info", help="parameter counts of a preset or config (no weights allocated)")
    info.add_argument("target", metavar="PRESET_OR_CONFIG", help="a preset name (tiny, small, laguna-xs2, laguna-m1) or a TOML config")
    info.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a model value, e.g. --set model.num_hidden_layers=4")
    info.set_defaults(handler=run_info)

    for verb, helptext, func in (("export", "write a Hugging Face Laguna directory", run_export),
                                 ("import", "read a Hugging Face Laguna directory into lagoon", run_import)):
        parser = subparsers.add_parser(verb, help=helptext)
        sub = parser.add_subparsers(dest=f"{verb}_format", metavar="FORMAT", required=True)
        hf = sub.add_parser("hf", help=helptext)
        hf.add_argument("source", metavar="SRC")
        hf.add_argument("out", metavar="OUT")
        hf.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="cast floating-point weights (default: keep)")
        hf.set_defaults(handler=func)


def _config_for(target: str, overrides: list[str]):
    from lagoon.config import load_config
    from lagoon.model.presets import PRESETS

    if target in PRESETS:
        return load_config(None, overrides, base={"model": {"preset": target}}).model
    if Path(target).suffix == ".toml" or Path(target).exists():
        return load_config(target, overrides).model
    raise LagoonError(f"{target!r} is neither a preset ({', '.join(PRESETS)}) nor a config file")


def _human(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


def run_info(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from lagoon.model.count import count_parameters

    config = _config_for(args.target, args.overrides)
    counts = count_parameters(config)
    table = Table(title=f"lagoon model: {args.target}", show_header=False)
    sparse = config.mlp_layer_types.count("sparse")
    rows = [
        ("total parameters", f"{_human(counts.total)} ({counts.total:,})"),
        ("active parameters", f"{_human(counts.active)} ({counts.active:,})"),
        ("layers", f"{config.num_hidden_layers} ({config.num_hidden_layers - sparse} dense, {sparse} MoE; "
                   f"{config.layer_types.count('sliding_attention')} sliding, {config.layer_types.count('full_attention')} global)"),
        ("hidden / head dim", f"{config.hidden_size} / {config.head_dim}"),
        ("query heads per layer", ", ".join(sorted({str(h) for h in config.num_attention_heads_per_layer}, key=int))
         + f"; {config.num_key_value_heads} KV heads"),
        ("experts", f"{config.num_experts} routed (top-{config.num_experts_per_tok}, width {config.moe_intermediate_size})"
                    f" + shared (width {config.shared_expert_intermediate_size})"),
        ("embeddings", _human(counts.embedding)),
        ("vocabulary", f"{config.vocab_size:,}"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
    return 0


def _dtype(name: str | None):
    import torch

    return None if name is None else getattr(torch, name)


def run_export(args: argparse.Namespace) -> int:
    from lagoon.model.hf import export_hf

    out = export_hf(args.source, args.out, dtype=_dtype(args.dtype))
    print(f"wrote Hugging Face Laguna checkpoint to {out}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from lagoon.model.hf import import_hf

    out = import_hf(args.source, args.out, dtype=_dtype(args.dtype))
    print(f"imported {args.source} into {out}")
    return 0
