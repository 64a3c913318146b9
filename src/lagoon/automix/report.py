"""OUT/report.html: the AutoMixer run on one self-contained page (figures as base64 PNG, no scripts).

Sections: the summary (held-out surrogate quality and chosen form per group, predicted losses of the
compared mixes with their bootstrap spread, and the sweep's signal-to-noise when noise runs exist),
predicted vs measured on held-out folds, the leaf × group interaction heatmap, the mixtures compared,
and, once `lagoon automix validate` ran, the larger-scale results with their spread over seeds,
predicted vs actual at proxy scale, and the sweep's compute next to the validated run's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lagoon.automix.fit import FIT_FILE, OPTIMIZED_FILE
from lagoon.automix.sweep import PLAN_FILE
from lagoon.automix.validation import MIXES, VALIDATION_FILE, verdict
from lagoon.errors import LagoonError
from lagoon.report.blocks import Section, Table, Text, new_figure, render

REPORT_FILE = "report.html"
MIX_COLORS = {"natural": "#7f8c9d", "uniform": "#e0a458", "optimized": "#2a7ab0"}


def write_report(out_dir: str | Path, force: bool = True) -> Path:
    """Write OUT/report.html from the files the pipeline left in OUT (atomically); unless `force`, only when
    it is missing or older than one of them."""
    from lagoon.report.html import render_page

    out_dir = Path(out_dir)
    for name in (PLAN_FILE, FIT_FILE, OPTIMIZED_FILE):
        if not (out_dir / name).is_file():
            raise LagoonError(f"{out_dir / name} is missing; run `lagoon automix run CONFIG --out {out_dir}` first")
    target = out_dir / REPORT_FILE
    inputs = [out_dir / name for name in (PLAN_FILE, FIT_FILE, OPTIMIZED_FILE, VALIDATION_FILE)]
    newest = max(path.stat().st_mtime_ns for path in inputs if path.is_file())
    if not force and target.is_file() and target.stat().st_mtime_ns >= newest:
        return target
    plan = json.loads((out_dir / PLAN_FILE).read_text())
    fit = json.loads((out_dir / FIT_FILE).read_text())
    optimized = json.loads((out_dir / OPTIMIZED_FILE).read_text())
    validation_path = out_dir / VALIDATION_FILE
    validation = json.loads(validation_path.read_text()) if validation_path.is_file() else None

    sections = [_summary(plan, fit, optimized), _scatter(fit), _interactions(optimized), _mixtures(plan, optimized)]
    if validation is not None:
        sections.append(_validation(validation))
    title = "lagoon AutoMixer"
    subtitle = f"{out_dir} · {optimized['proxies']} proxies · {len(plan['leaves'])} leaves"
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    staging.write_text(render_page(title, subtitle, sections))
    staging.replace(target)
    return target


def _f(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}"


def _summary(plan: dict[str, Any], fit: dict[str, Any], optimized: dict[str, Any]) -> Section:
    groups = list(optimized["objective_weights"])
    # Per-fold Spearman needs at least 3 proxies in a fold; with smaller folds the column would be empty.
    per_fold = any(optimized["cv"][group]["fold_spearman"] for group in groups)
    rows = []
    for group in groups:
        cv = optimized["cv"][group]
        folds = cv["fold_spearman"]
        fold_range = [f"{min(folds):.2f} … {max(folds):.2f}" if folds else "–"] if per_fold else []
        rows.append([group, _f(cv["spearman"], 3), *fold_range,
                     _f(cv["mae"]), optimized.get("chosen", {}).get(group, {}).get("label", optimized["surrogate"]),
                     f"{optimized['objective_weights'][group]:g}",
                     *[_f(optimized["predicted"][mix][group]) for mix in MIXES]])
    blank = [""] * (5 if per_fold else 4)
    rows.append(["objective", *blank, *[_f(optimized["predicted_objective"][mix]) for mix in MIXES]])
    spread = optimized.get("predicted_spread")
    if spread:
        rows.append(["± spread vs natural", *blank, *[_f(spread[mix]) for mix in MIXES]])
    text = (f"{optimized['proxies']} proxies of {plan['proxy_tokens']:,} tokens each, over {len(plan['leaves'])} leaves, "
            f"repetition matched to a target run of {plan['target_tokens']:,} tokens (cap {plan['max_epochs']:g} epochs). "
            f"Surrogate form chosen per group among {optimized.get('candidates', 1)} candidates by "
            f"{fit.get('inner_folds', '')}-fold inner cross-validation; held-out figures from the "
            f"{fit['folds']}-fold nested cross-validation (the choice repeated inside every outer fold). Optimizer: "
            f"{optimized['method']} on the predicted objective plus {optimized.get('uncertainty_weight', 0):g} × the "
            f"spread of {optimized.get('bootstrap', 0)} bootstrap refits, with a KL pull of "
            f"{optimized['kl_beta']:.3g} per nat"
            + (f" inside a trust region of KL ≤ {optimized['max_kl']:.3f} nats" if optimized.get("max_kl") is not None else "")
            + f" (KL of the chosen mix to the prior: {optimized['kl_to_prior']:.3f} nats).")
    table = Table(["group", "held-out Spearman", *(["per fold"] if per_fold else []), "held-out MAE", "form",
                   "λ_group", *[f"predicted {mix}" for mix in MIXES]], rows,
                  "Surrogate quality on held-out folds, and predicted bits per byte (proxy scale) of each mix; "
                  "the spread row is the bootstrap standard deviation of each mix's predicted objective change "
                  "from the natural mix"
                  + ("" if per_fold else f" (no per-fold Spearman: each of the {fit['folds']} folds holds fewer than 3 "
                                         "proxies)"))
    blocks: list[Any] = [Text(text), table]
    if optimized.get("noise"):
        blocks.append(_noise_table(optimized))
    return Section("Summary", blocks)


def _noise_table(optimized: dict[str, Any]) -> Table:
    runs = optimized["noise_runs"]
    count = len(next(iter(runs["bpb"].values())))
    rows = []
    for group, figures in optimized["noise"].items():
        rows.append([group, _f(figures["sweep_sd"]), _f(figures["noise_sd"]), f"{figures['snr']:.1f}",
                     _f(figures["spearman_ceiling"], 3), _f(optimized["cv"][group]["spearman"], 3)])
    return Table(["group", "sd across the sweep (signal)", "sd across seeds (noise)", "SNR",
                  "Spearman ceiling", "held-out Spearman"], rows,
                 f"The sweep's signal-to-noise: {count} proxies at the natural mix with different training and data "
                 "seeds give the noise; SNR = (signal² − noise²) / noise²; the ceiling is the Spearman a perfect "
                 "surrogate would reach against losses this noisy (noise assumed alike at every mixture)")


def _scatter(fit: dict[str, Any]) -> Section:
    groups = list(fit["cv"])
    figure, axes = new_figure(len(groups), width=5.0, height=4.0)
    for axis, group in zip(axes, groups):
        cv = fit["cv"][group]
        measured, predicted = np.asarray(cv["measured"]), np.asarray(cv["predicted"])
        axis.scatter(measured, predicted, s=14, color="#2a7ab0", alpha=0.8)
        low, high = min(measured.min(), predicted.min()), max(measured.max(), predicted.max())
        axis.plot([low, high], [low, high], color="#999", linewidth=0.8, linestyle="--")
        axis.set_title(f"{group}: Spearman {cv['spearman']:.3f}, MAE {cv['mae']:.4f}", fontsize=10)
        axis.set_xlabel("measured bits per byte")
        axis.set_ylabel("predicted (held-out fold)")
    return Section("Predicted vs measured", [render(figure, "Each point is a proxy, predicted by a surrogate fit "
                                                            "without it (K-fold); the dashed line is y = x.")])


def _interactions(optimized: dict[str, Any]) -> Section:
    info = optimized["interactions"]
    matrix_GK = np.asarray(info["matrix"])
    leaves, groups = info["leaves"], info["groups"]
    figure, (axis,) = new_figure(1, width=max(7.0, 0.55 * len(leaves) + 2), height=1.0 + 0.5 * len(groups))
    axis.grid(False)
    bound = float(np.abs(matrix_GK).max()) or 1.0
    image = axis.imshow(matrix_GK, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    axis.set_xticks(range(len(leaves)), leaves, rotation=60, ha="right", fontsize=8)
    axis.set_yticks(range(len(groups)), groups)
    for g in range(len(groups)):
        for k in range(len(leaves)):
            axis.text(k, g, f"{matrix_GK[g, k]:+.2f}", ha="center", va="center", fontsize=6.5,
                      color="white" if abs(matrix_GK[g, k]) > 0.6 * bound else "black")
    figure.colorbar(image, ax=axis, label="Δ predicted bits per byte")
    caption = (f"Change in each group's predicted loss when {info['step']:.0%} of the natural mix moves onto one "
               "leaf: blue helps the group, red hurts it.")
    rows = []
    for g, group in enumerate(groups):
        order = np.argsort(matrix_GK[g])
        rows.append([group, ", ".join(leaves[k] for k in order[:3]), ", ".join(leaves[k] for k in order[::-1][:3])])
    return Section("Leaf interactions", [render(figure, caption),
                                         Table(["group", "helps most", "hurts most"], rows)])


def _mixtures(plan: dict[str, Any], optimized: dict[str, Any]) -> Section:
    leaves = plan["leaves"]
    figure, (axis,) = new_figure(1, width=max(8.0, 0.6 * len(leaves) + 2), height=4.0)
    positions = np.arange(len(leaves))
    width = 0.27
    for i, mix in enumerate(MIXES):
        values = [optimized["mixes"][mix][leaf] for leaf in leaves]
        axis.bar(positions + (i - 1) * width, values, width, label=mix, color=MIX_COLORS[mix])
    top = min(1.0, 1.15 * max(max(optimized["mixes"][m].values()) for m in MIXES))
    caps = np.minimum(np.asarray(plan["caps"], dtype=float), 1.0)
    inside = caps <= top
    axis.scatter(positions[inside], caps[inside], marker="_", s=160, color="#c0392b", label="repetition cap", zorder=3)
    # A cap above the chart (1.0 often: the leaf may take the whole mix) is marked at the top edge, not lost.
    axis.scatter(positions[~inside], np.full((~inside).sum(), top), marker=10, s=40, color="#c0392b", clip_on=False,
                 label="cap above the chart", zorder=3)
    axis.set_xticks(positions, leaves, rotation=60, ha="right", fontsize=8)
    axis.set_ylabel("weight")
    axis.set_ylim(0, top)
    axis.legend(fontsize=8)
    rows = [[leaf, *[f"{optimized['mixes'][mix][leaf]:.4f}" for mix in MIXES], f"{plan['caps'][k]:.4f}",
             f"{optimized['epochs'][leaf]:.2f}"] for k, leaf in enumerate(leaves)]
    return Section("Mixtures compared", [
        render(figure, "Weights per leaf; red ticks are the largest weight the repetition cap allows, and red "
                       f"triangles at the top edge mark the {int((~inside).sum())} leaves whose cap lies above the chart "
                       "(a cap of 1.0 does not bind)." if (~inside).any() else
               "Weights per leaf; red ticks are the largest weight the repetition cap allows."),
        Table(["leaf", *MIXES, "cap", "epochs (optimized)"], rows)])


def _validation(validation: dict[str, Any]) -> Section:
    groups = list(validation["objective_weights"])
    mixes = validation["mixes"]
    seeds = validation["seeds"]
    blocks: list[Any] = []
    beats = "beats" if validation["optimized_beats_both_in_every_seed"] else "does NOT beat"
    compute = validation.get("compute", {})
    blocks.append(Text(
        f"At {compute.get('model_ratio', float('nan')):.1f}× the proxy's parameters and "
        f"{compute.get('token_ratio', float('nan')):g}× its tokens, over seeds {seeds}: the optimized mix {beats} "
        "both the natural and the uniform mix on the objective in every seed."))
    rows = []
    for mix in MIXES:
        entry = mixes[mix]
        rows.append([mix, f"{entry['objective']['mean']:.4f} ± {entry['objective']['std']:.4f}",
                     *[f"{entry['groups'][g]['mean']:.4f} ± {entry['groups'][g]['std']:.4f}" for g in groups]])
    blocks.append(Table(["mix", "objective", *groups], rows,
                        "Held-out bits per byte at the larger scale, mean ± std over seeds (lower is better)"))
    seed_rows = [[str(seed), *[f"{mixes[mix]['objective']['values'][i]:.4f}" for mix in MIXES],
                  "yes" if validation["wins"]["natural"][i] else "no", "yes" if validation["wins"]["uniform"][i] else "no"]
                 for i, seed in enumerate(seeds)]
    blocks.append(Table(["seed", *[f"objective {m}" for m in MIXES], "beats natural", "beats uniform"], seed_rows))
    if validation.get("changes"):
        change_rows = [[f"vs {baseline}", key, f"{change['mean']:+.4f} ± {change['std']:.4f}", verdict(change)]
                       for baseline, changes in validation["changes"].items() for key, change in changes.items()]
        blocks.append(Table(["baseline", "", "optimized − baseline", "optimized is"], change_rows,
                            "Paired by seed: the optimized mix's bits per byte minus the baseline's, mean ± std over "
                            "seeds (negative: lower loss); a group where it is worse is a loss, shown as one"))

    figure, axes = new_figure(len(groups) + 1, width=4.2, height=3.2)
    for axis, key in zip(axes, ["objective", *groups]):
        for i, mix in enumerate(MIXES):
            stats = mixes[mix]["objective"] if key == "objective" else mixes[mix]["groups"][key]
            axis.bar(i, stats["mean"], yerr=stats["std"], color=MIX_COLORS[mix], capsize=4)
            axis.scatter([i] * len(stats["values"]), stats["values"], color="black", s=8, zorder=3)
        lows = [min((mixes[m]["objective"] if key == "objective" else mixes[m]["groups"][key])["values"]) for m in MIXES]
        highs = [max((mixes[m]["objective"] if key == "objective" else mixes[m]["groups"][key])["values"]) for m in MIXES]
        span = max(highs) - min(lows) or 1.0
        axis.set_ylim(min(lows) - 0.5 * span, max(highs) + 0.5 * span)
        axis.set_xticks(range(len(MIXES)), MIXES)
        axis.set_title(key, fontsize=10)
    blocks.append(render(figure, "Bars: mean over seeds; whiskers: standard deviation; dots: single seeds."))

    if validation.get("proxy_scale"):
        rows = []
        for mix, entry in validation["proxy_scale"].items():
            rows.append([mix, f"{entry['predicted_objective']:.4f}", f"{entry['measured_objective']:.4f}",
                         *[f"{entry['predicted'][g]:.4f} / {entry['measured'][g]:.4f}" for g in groups]])
        blocks.append(Table(["mix", "predicted objective", "measured objective", *[f"{g} pred / meas" for g in groups]],
                            rows, "Predicted vs actual at proxy scale (where the surrogates were fit)"))
    ranking = validation["ranking"]
    blocks.append(Text(f"Ranking predicted by the surrogates: {' < '.join(ranking['predicted'])}; measured at the "
                       f"larger scale: {' < '.join(ranking['measured_at_scale'])}."))
    if compute:
        blocks.append(Table(["quantity", "value"], [
            ["proxy tokens / validation tokens / target tokens",
             f"{compute['proxy_tokens']:,} / {compute['validation_tokens']:,} / {compute['target_tokens']:,}"],
            ["sweep compute (6·N·D, all proxies and noise runs)", f"{compute['sweep_flops']:.3e} FLOPs"],
            ["one validation run", f"{compute['validation_run_flops']:.3e} FLOPs"],
            ["sweep as a share of one validation run", f"{compute['sweep_share_of_validation_run']:.0%}"],
            ["sweep wall time (summed over proxies and noise runs)", f"{compute['sweep_wall_s']:.0f} s"],
            ["one validation run, wall time", f"{compute['validation_run_wall_s']:.0f} s"],
        ], "Compute"))
    return Section("Validation at a larger scale", blocks)


def report_sections(out_dir: str | Path) -> list[Section]:
    """The report's sections without the page, for pages that embed an AutoMixer run (e.g. `lagoon demo`)."""
    out_dir = Path(out_dir)
    plan = json.loads((out_dir / PLAN_FILE).read_text())
    fit = json.loads((out_dir / FIT_FILE).read_text())
    optimized = json.loads((out_dir / OPTIMIZED_FILE).read_text())
    return [_summary(plan, fit, optimized), _mixtures(plan, optimized), _interactions(optimized)]
