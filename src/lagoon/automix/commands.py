"""``lagoon automix run | noise | validate | report``."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from lagoon.cli import add_config_arguments

    automix = subparsers.add_parser("automix", help="choose the data mixture with proxy models (AutoMixer)")
    actions = automix.add_subparsers(dest="automix_command", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="proxy sweep → surrogates → optimized mixture → report (resumable)")
    add_config_arguments(run)
    run.add_argument("--out", required=True, metavar="DIR", help="output directory (resumes what is there)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(handler=run_command)

    noise = actions.add_parser("noise", help="train proxies at the natural mix with other seeds: per-group seed noise")
    add_config_arguments(noise)
    noise.add_argument("--out", required=True, metavar="DIR", help="output directory (a sweep's, or a new one)")
    noise.add_argument("--seeds", type=int, default=None, metavar="N",
                       help="noise runs (default: automix.noise_seeds)")
    noise.add_argument("--no-progress", action="store_true", help="no progress bar")
    noise.set_defaults(handler=noise_command)

    validate = actions.add_parser("validate", help="train optimized, natural and uniform mixes at a larger scale")
    add_config_arguments(validate)
    validate.add_argument("--out", required=True, metavar="DIR", help="the directory of `lagoon automix run`")
    validate.add_argument("--no-progress", action="store_true", help="no progress bar")
    validate.set_defaults(handler=validate_command)

    report = actions.add_parser("report", help="rewrite DIR/report.html from DIR's files")
    report.add_argument("out", metavar="DIR")
    report.set_defaults(handler=report_command)


def run_command(args: argparse.Namespace) -> int:
    from lagoon.automix.pipeline import run
    from lagoon.config import load_config

    summary = run(load_config(args.config, args.overrides), args.out, show_progress=not args.no_progress)
    for group, cv in summary["cv"].items():
        line = f"{group:>10}: held-out Spearman {cv['spearman']:.3f}, MAE {cv['mae']:.4f}"
        if summary.get("noise") and group in summary["noise"]:
            figures = summary["noise"][group]
            line += f"; seed noise sd {figures['noise_sd']:.4f} vs sweep sd {figures['sweep_sd']:.4f} " \
                    f"(ceiling ρ {figures['spearman_ceiling']:.3f})"
        print(line + f"; form: {summary['chosen'][group]['label']}")
    predicted = summary["predicted_objective"]
    print("predicted objective: " + ", ".join(f"{mix} {value:.4f}" for mix, value in predicted.items()))
    print(f"mixture: {summary['mixture_file']}\nreport: {summary['report']}")
    return 0


def noise_command(args: argparse.Namespace) -> int:
    import numpy as np

    from lagoon.automix.pipeline import noise
    from lagoon.config import load_config

    summary = noise(load_config(args.config, args.overrides), args.out, args.seeds, show_progress=not args.no_progress)
    runs = len(next(iter(summary["bpb"].values())))
    print(f"{runs} runs at the natural mixture (seeds {summary['seeds']}"
          + (" and proxy 0's)" if summary["includes_proxy_0"] else ")"))
    for group, values in summary["bpb"].items():
        print(f"{group:>10}: {np.mean(values):.4f} bits per byte, seed-to-seed sd {summary['noise_sd'][group]:.4f}")
    return 0


def validate_command(args: argparse.Namespace) -> int:
    from lagoon.automix.pipeline import validate
    from lagoon.config import load_config

    summary = validate(load_config(args.config, args.overrides), args.out, show_progress=not args.no_progress)
    for mix, entry in summary["mixes"].items():
        objective = entry["objective"]
        print(f"{mix:>10}: objective {objective['mean']:.4f} ± {objective['std']:.4f}")
    from lagoon.automix.validation import verdict

    for baseline, changes in summary["changes"].items():
        for key, change in changes.items():
            print(f"optimized − {baseline:<7} {key:>10}: {change['mean']:+.4f} ± {change['std']:.4f} "
                  f"({verdict(change)})")
    beats = "beats" if summary["optimized_beats_both_in_every_seed"] else "does not beat"
    print(f"the optimized mix {beats} natural and uniform on the objective in every seed")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from lagoon.automix.report import write_report

    print(write_report(args.out))
    return 0
