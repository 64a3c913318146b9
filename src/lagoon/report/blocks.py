"""The pieces a report is made of, and the plotting helpers every section shares.

A section function takes the runs (`lagoon.report.runs.Run`) and returns a `Section` of blocks
(`Figure`, `Table`, `Text`), or None when the runs hold nothing for it. Figures are drawn with
matplotlib's Agg canvas (no display, no pyplot global state) and embedded as base64 PNG, so the
report is one file that opens offline.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure as MplFigure

from lagoon.report.runs import Run


@dataclass
class Figure:
    png: bytes
    caption: str = ""


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Text:
    text: str


@dataclass
class Links:
    """Relative links to other files of the run (e.g. each stage's own report)."""

    items: list[tuple[str, str]]
    """(label, relative path) pairs."""


Block = Figure | Table | Text | Links


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Plotting


def new_figure(panels: int = 1, width: float = 7.0, height: float = 3.6) -> tuple[MplFigure, list]:
    columns = min(panels, 2)
    rows = (panels + columns - 1) // columns
    figure = MplFigure(figsize=(width if columns == 1 else 2 * width * 0.75, height * rows), dpi=100,
                       layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel().tolist()
    for extra in axes[panels:]:
        extra.set_visible(False)
    for axis in axes:
        axis.grid(True, alpha=0.3)
    return figure, axes[:panels]


def render(figure: MplFigure, caption: str = "") -> Figure:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return Figure(buffer.getvalue(), caption)


def legend(axis) -> None:
    """A legend that stays readable with many runs (smaller, in columns, none beyond 24 entries)."""
    entries = len(axis.get_legend_handles_labels()[0])
    if entries == 0 or entries > 24:
        return
    axis.legend(fontsize=8 if entries <= 6 else 6, ncol=1 if entries <= 8 else 2)


def ema(values: Sequence[float], weight: float) -> np.ndarray:
    """Exponential moving average with bias correction (as TensorBoard's smoothing)."""
    out = np.empty(len(values))
    average, norm = 0.0, 0.0
    for i, value in enumerate(values):
        average = weight * average + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out[i] = average / norm
    return out


def smoothing_for(points: int) -> float:
    return 0.0 if points < 20 else min(0.98, 1 - 10 / points)


def grouped(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return groups


def plot_metric(axis, runs: list[Run], key: str, smooth: bool = False, label_suffix: str = "",
                label: str | None = None, **style) -> bool:
    """Draw `key` against step: one line per run, or per group a mean line with a min–max band over its runs
    (seeds). `label` names a lone run's line (default: the key). Returns whether anything was drawn."""
    drew = False
    groups = grouped(runs)
    fixed_color = style.pop("color", None)
    colors = {name: fixed_color or f"C{i % 10}" for i, name in enumerate(groups)}
    for name, members in groups.items():
        curves = [run.series(key) for run in members]
        curves = [(np.asarray(s), np.asarray(v)) for s, v in curves if s]
        if not curves:
            continue
        drew = True
        label_text = (name if name != "." else (label or key)) + label_suffix
        if smooth:
            curves = [(s, ema(v, smoothing_for(len(v)))) for s, v in curves]
        if len(curves) == 1:
            steps, values = curves[0]
            axis.plot(steps, values, color=colors[name], label=label_text, linewidth=1.2, **style)
            continue
        # Align the seeds on the steps they all logged.
        common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
        if not common:
            for steps, values in curves:
                axis.plot(steps, values, color=colors[name], linewidth=0.8, alpha=0.6, **style)
            continue
        stacked = np.stack([np.interp(common, s, v) for s, v in curves])
        axis.plot(common, stacked.mean(0), color=colors[name], label=f"{label_text} (mean of {len(curves)})",
                  linewidth=1.2, **style)
        axis.fill_between(common, stacked.min(0), stacked.max(0), color=colors[name], alpha=0.2, linewidth=0)
    return drew
