"""Report section "SDC checks": what the silent-data-corruption checks did during a run.

A table of counts per run (checks, events by kind, rollbacks, skipped steps, mean check time), a figure
of each check's duration over the steps with every SDC event marked where it happened, and the SDC
events themselves (who, what, which parameters, what was done).
"""

from __future__ import annotations

from collections import Counter

from lagoon.report.blocks import Section, Table, Text, new_figure, render
from lagoon.report.runs import Run

KIND_COLOURS = {"sdc_corruption": "C3", "sdc_unresolved": "C1", "sdc_transient": "C2", "sdc_persistent": "C3",
                "sdc_owner_mismatch": "C4", "sdc_nonfinite": "C5", "sdc_grad_spike": "C6", "sdc_loss_spike": "C7",
                "sdc_fault_injected": "C9", "sdc_recovered": "C2", "sdc_hung": "C3", "sdc_peer_lost": "C3"}


def _sdc_events(run: Run) -> list[dict]:
    return [e for e in run.events if str(e.get("event", "")).startswith("sdc_")]


def _listed(values, limit: int = 3) -> str:
    values = [str(v) for v in (values or [])]
    return ", ".join(values[:limit]) + (f" (+{len(values) - limit})" if len(values) > limit else "")


def sdc_section(runs: list[Run]) -> Section | None:
    active = [run for run in runs if run.last("sdc/checks") is not None or _sdc_events(run)]
    if not active:
        return None
    rows = []
    for run in active:
        kinds = Counter(e["event"].removeprefix("sdc_") for e in _sdc_events(run))
        _, times = run.series("sdc/check_ms")
        rollbacks = sum(1 for e in run.events if e.get("event") == "rollback")
        rows.append([run.label, f"{int(run.last('sdc/checks') or 0)}",
                     ", ".join(f"{k} ×{n}" for k, n in sorted(kinds.items())) or "none", str(rollbacks),
                     f"{int(run.last('sdc/skipped_steps') or 0)}",
                     f"{sum(times) / len(times):.1f}" if times else "–"])
    blocks: list = [Table(["run", "checks", "events", "rollbacks", "skipped steps", "mean check (ms)"], rows)]

    figure, (axis,) = new_figure(height=3.0)
    drawn = False
    for index, run in enumerate(active):
        steps, times = run.series("sdc/check_ms")
        if steps:
            axis.plot(steps, times, "o", markersize=3, color=f"C{index % 10}",
                      label=run.label if len(active) > 1 else "check time")
            drawn = True
        for event in _sdc_events(run):
            colour = KIND_COLOURS.get(event["event"], "C8")
            axis.axvline(event.get("step", 0), color=colour, alpha=0.6, linewidth=1.0)
            axis.annotate(event["event"].removeprefix("sdc_"), (event.get("step", 0), 1.0),
                          xycoords=("data", "axes fraction"), rotation=90, fontsize=6, va="top", ha="right",
                          color=colour)
            drawn = True
    if drawn:
        axis.set_xlabel("step")
        axis.set_ylabel("check time (ms)")
        if len(active) > 1:
            axis.legend(fontsize=7)
        blocks.append(render(figure, "Duration of each replica check (fingerprint, all-gather, vote) and the SDC "
                                     "events, marked at their step."))

    details = []
    for run in active:
        for event in _sdc_events(run):
            hosts = event.get("hosts") or []
            ranks = event.get("ranks") or []
            who = ", ".join(f"{r} ({h})" for r, h in zip(ranks, hosts)) if hosts else _listed(ranks)
            detail = event.get("detail")
            details.append([run.label, str(event.get("step", "")), event["event"].removeprefix("sdc_"), who or "–",
                            _listed(event.get("parameters")), str(event.get("action", "")),
                            detail if isinstance(detail, str) else ""])
    if details:
        shown = details[-100:]
        if len(details) > len(shown):
            blocks.append(Text(f"The last {len(shown)} of {len(details)} SDC events."))
        blocks.append(Table(["run", "step", "event", "rank (host)", "parameters", "action", "detail"], shown))
    return Section("SDC checks", blocks)


SECTIONS = [sdc_section]
