"""``lagoon report DIR``: one self-contained HTML page (DIR/report.html) of a run or a directory of runs.

    from lagoon.report import build_report
    build_report("runs/tiny")                       # -> runs/tiny/report.html

The page is a list of sections. Each section is a function ``(runs: list[Run]) -> Section | None`` fed
from the files of the run directories (metrics.jsonl, events.jsonl, config.toml, checkpoints/); it
returns None when there is nothing for it to show. Section functions live in modules listed in
`SECTION_MODULES` (each exposes ``SECTIONS``, a list of such functions), in page order. A stage adds its
own sections by writing such a module (e.g. ``lagoon.report.automix``) and appending it here.

A directory of runs (a sweep, a benchmark's output) gets the same sections with one curve per run, or
per setting a mean line and a min–max band over its seeds (runs ``SETTING/seedN``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lagoon.report.blocks import Section
    from lagoon.report.runs import Run

SECTION_MODULES = [
    "lagoon.report.training",
    "lagoon.report.sdc",
    "lagoon.report.rl",
]

# Imported on first use, so that `lagoon --help` does not load matplotlib.
_LAZY = {"Figure": "lagoon.report.blocks", "Section": "lagoon.report.blocks", "Table": "lagoon.report.blocks",
         "Text": "lagoon.report.blocks", "Run": "lagoon.report.runs", "load_runs": "lagoon.report.runs"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lagoon.report' has no attribute {name!r}")


SectionFunction = Callable[["list[Run]"], "Section | None"]


def section_functions() -> list[SectionFunction]:
    functions: list[SectionFunction] = []
    for name in SECTION_MODULES:
        functions.extend(importlib.import_module(name).SECTIONS)
    return functions


def build_sections(runs: list[Run]) -> list[Section]:
    """Every registered section that has something to show for `runs`, in page order."""
    return [section for function in section_functions() if (section := function(runs)) is not None]


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None, title: str | None = None,
                 include: list[str] | None = None) -> Path:
    """Write the HTML report of `run_dir` (a run or a directory of runs) to `out` (default DIR/report.html).

    `include` keeps only the named groups of a directory of runs (e.g. the tuned settings of a sweep)."""
    from lagoon.report.html import render_page
    from lagoon.report.runs import load_runs

    root = Path(run_dir)
    runs = load_runs(root, include)
    sections = build_sections(runs)
    heading = title or f"lagoon report: {root.resolve().name}"
    subtitle = f"{root}" + (f" · {len(runs)} runs" if len(runs) > 1 else "")
    page = render_page(heading, subtitle, sections)
    target = Path(out) if out is not None else root / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    staging.write_text(page)
    staging.replace(target)
    return target


__all__ = ["Figure", "Run", "SECTION_MODULES", "Section", "Table", "Text", "build_report", "build_sections",
           "load_runs", "section_functions"]
