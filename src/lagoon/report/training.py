"""Report sections of a pretraining run (or several): summary, loss, learning rate, eval bits per byte,
expert load, gradient norm and throughput, and the run's events (resumes, rollbacks, skipped checkpoints)."""

from __future__ import annotations

from matplotlib.ticker import FuncFormatter

from lagoon.report.blocks import Section, Table, Text, legend, new_figure, plot_metric, render
from lagoon.report.runs import Run
from lagoon.train.metrics import EVAL_PREFIX


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def summary_section(runs: list[Run]) -> Section | None:
    groups = sorted({g for run in runs for g in run.eval_groups})
    header = ["run", "steps", "tokens", "final loss", *[f"bpb {g}" for g in groups], "checkpoints"]
    rows = []
    for run in runs:
        step = run.last("step")
        tokens = run.last("tokens")
        if tokens is None and run.is_rl:  # RL logs each step's trained tokens, not a running total
            tokens = sum(run.series("loss_tokens")[1]) or None
        rows.append([run.label, "–" if step is None else str(int(step)),
                     "–" if tokens is None else f"{int(tokens):,}", _number(run.last("loss")),
                     *[_number(run.last(EVAL_PREFIX + g)) for g in groups],
                     ", ".join(run.checkpoints()[-3:]) or "none"])
    notes = []
    if any(run.is_rl for run in runs):
        notes.append("For RL: tokens are the completion tokens the loss was taken over; the loss is CISPO's "
                     "surrogate, not a cross-entropy.")
    if groups:
        notes.append("bpb: the run's last held-out evaluation during training.")
    return Section("Summary", [Table(header, rows, " ".join(notes))])


def loss_section(runs: list[Run]) -> Section | None:
    figure, (axis,) = new_figure()
    if not plot_metric(axis, runs, "loss", smooth=max(len(run.metrics) for run in runs) >= 20):
        return None
    if len(runs) == 1:
        steps, values = runs[0].series("loss")
        axis.plot(steps, values, color="C0", alpha=0.25, linewidth=0.8, label="raw")
    axis.set_xlabel("step")
    rl = all(run.is_rl for run in runs)
    axis.set_ylabel("CISPO surrogate loss" if rl else "training loss (nats/token)")
    legend(axis)
    what = ("CISPO's surrogate loss per step: −(clipped importance weight × advantage × log-probability), averaged "
            "over trained tokens. It is not a cross-entropy: it is negative when rewarded completions dominate, and "
            "its level says little; the reward is the measure of progress" if rl else "Training cross-entropy per step")
    caption = what + (" (smoothed; raw in light colour)." if len(runs) == 1 else
                      ", smoothed; bands span the runs (seeds) of a setting.")
    return Section("Training loss", [render(figure, caption)])


def learning_rate_section(runs: list[Run]) -> Section | None:
    figure, (axis,) = new_figure(height=2.8)
    if not plot_metric(axis, runs, "lr"):
        return None
    axis.set_xlabel("step")
    axis.set_ylabel("learning rate")
    axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if len(runs) > 1:
        legend(axis)
    return Section("Learning rate", [render(figure, "Peak-scaled learning rate of each step's update.")])


def eval_section(runs: list[Run]) -> Section | None:
    groups = sorted({g for run in runs for g in run.eval_groups})
    if not groups:
        return None
    single = len(runs) == 1
    figure, axes = new_figure(1 if single else len(groups))
    for index, group in enumerate(groups):
        axis = axes[0 if single else index]
        if single:
            plot_metric(axis, runs, EVAL_PREFIX + group, label=group, color=f"C{index}", marker="o", markersize=3)
        else:
            plot_metric(axis, runs, EVAL_PREFIX + group, marker="o", markersize=3)
            axis.set_title(group)
        axis.set_xlabel("step")
        axis.set_ylabel("held-out bits per byte")
        if single or index == 0:
            legend(axis)
    return Section("Evaluation: bits per byte per capability group",
                   [render(figure, "Document-masked held-out bits per byte (lower is better).")])


def expert_load_section(runs: list[Run]) -> Section | None:
    figure, (axis,) = new_figure(height=3.0)
    drew_max = plot_metric(axis, runs, "max_load", label_suffix=" max", label="load")
    drew_min = plot_metric(axis, runs, "min_load", label_suffix=" min", label="load", linestyle="--")
    if not (drew_max or drew_min):
        return None
    axis.axhline(1.0, color="black", linewidth=0.8, alpha=0.5)
    axis.set_xlabel("step")
    axis.set_ylabel("expert load ÷ mean load")
    legend(axis)
    return Section("Expert load", [render(figure, "Busiest (solid) and idlest (dashed) expert's share relative to a "
                                                  "perfectly balanced router, averaged over MoE layers; 1.0 is balance.")])


def optimization_section(runs: list[Run]) -> Section | None:
    figure, axes = new_figure(2, height=3.0)
    drew_norm = plot_metric(axes[0], runs, "grad_norm")
    drew_speed = plot_metric(axes[1], runs, "tokens_per_s", smooth=True)
    if not (drew_norm or drew_speed):
        return None
    axes[0].set_ylabel("gradient norm (before clipping)")
    axes[1].set_ylabel("tokens / s")
    for axis in axes:
        axis.set_xlabel("step")
        if len(runs) > 1 and axis is axes[0]:
            legend(axis)
    return Section("Gradient norm and throughput", [render(figure)])


def _final_mean_bpb(run: Run) -> float | None:
    for row in reversed(run.metrics):
        values = [v for k, v in row.items() if k.startswith(EVAL_PREFIX) and isinstance(v, (int, float))]
        if values:
            return sum(values) / len(values)
    return None


def sweep_section(runs: list[Run]) -> Section | None:
    """Final held-out bits per byte against the learning rate, one line per optimizer × model width (runs
    of a learning-rate sweep, read from each run's resolved config.toml; seeds averaged)."""
    points: dict[str, dict[float, list[float]]] = {}
    for run in runs:
        optim, model = run.config.get("optim", {}), run.config.get("model", {})
        final = _final_mean_bpb(run)
        if "lr" not in optim or final is None:
            continue
        name = optim.get("name", "?")
        series = f"{name} d={model.get('hidden_size', '?')}"
        rate = float(optim["lr"] if name == "muon" else optim.get("adamw_lr", optim["lr"]))
        points.setdefault(series, {}).setdefault(rate, []).append(final)
    if not points or max(len(rates) for rates in points.values()) < 3:
        return None
    figure, (axis,) = new_figure()
    for index, (series, by_rate) in enumerate(sorted(points.items())):
        rates = sorted(by_rate)
        means = [sum(by_rate[r]) / len(by_rate[r]) for r in rates]
        axis.plot(rates, means, marker="o", color=f"C{index % 10}", label=series)
        best = min(range(len(rates)), key=means.__getitem__)
        axis.plot([rates[best]], [means[best]], marker="*", markersize=14, color=f"C{index % 10}")
    axis.set_xscale("log", base=2)
    axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_xlabel("peak learning rate (Muon's for Muon runs)")
    axis.set_ylabel("final held-out bits per byte (mean of groups)")
    legend(axis)
    return Section("Learning-rate sweep", [render(figure, "Each setting's final evaluation (seeds averaged); a star "
                                                          "marks each line's best rate.")])


def events_section(runs: list[Run]) -> Section | None:
    rows = []
    for run in runs:
        for event in run.events:
            detail = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "step"))
            rows.append([run.label, str(event.get("event", "")), str(event.get("step", "")), detail])
    if not rows:
        return None
    shown = rows[-200:]
    blocks = [Table(["run", "event", "step", "detail"], shown)]
    if len(rows) > len(shown):
        blocks.insert(0, Text(f"The last {len(shown)} of {len(rows)} events."))
    return Section("Events", blocks)


SECTIONS = [summary_section, loss_section, learning_rate_section, eval_section, sweep_section, expert_load_section,
            optimization_section, events_section]
