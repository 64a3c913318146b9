"""RUN/report.html: the whole main job on one page, with links to every stage's own report.

The page reuses the stages' report sections (AutoMixer's mixtures, the training curves and SDC events of
pretraining, RL's reward, staleness, mismatch and weight-sync figures) and adds a summary of the stages and
the evaluation. Like every lagoon report it is self-contained and opens offline; the links are relative.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lagoon.report.blocks import Links, Section, Table, Text, new_figure, render

REPORT_FILE = "report.html"


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return "–" if value is None else str(value)


def _summary(run_dir: Path, results: dict[str, dict[str, Any]]) -> Section:
    state = json.loads((run_dir / "pipeline.json").read_text()) if (run_dir / "pipeline.json").is_file() else {}
    rows = []
    for name, entry in state.get("stages", {}).items():
        summary = entry.get("summary", {})
        if name == "data":
            detail = f"{summary.get('leaves')} leaves, {summary.get('tokens', 0):,} training tokens"
        elif name == "automix":
            detail = f"mixture: {Path(summary.get('mixture_file', '')).name}"
        elif name == "pretrain":
            detail = (f"{summary.get('steps')} steps on {summary.get('ranks')} ranks, final loss "
                      f"{_fmt(summary.get('loss'))}; {_fmt(summary.get('sdc_checks'))} SDC checks, "
                      f"{_fmt(summary.get('sdc_injected'))} injected fault(s), "
                      f"{_fmt(summary.get('sdc_rollbacks'))} rollback(s)"
                      + (f" ({', '.join(summary['sdc_events'])})" if isinstance(summary.get("sdc_events"), list)
                         and summary["sdc_events"] else ""))
        elif name == "export":
            detail = ", ".join(summary.get("files", []))
        elif name == "rl":
            start = summary.get("reward_before_policy")
            detail = (f"policy version {summary.get('version')}; held-out arith-code reward "
                      f"{_fmt(summary.get('reward_before'))} at the start of RL" + (f" ({start})" if start else "")
                      + f" → {_fmt(summary.get('reward_after'))} after RL")
        elif name == "evaluate":
            detail = "see below"
        else:
            detail = ""
        rows.append([name, f"{entry.get('seconds', 0) / 60:.1f} min", detail])
    links = [(label, path) for label, path in (
        ("AutoMixer report", "automix/report.html"), ("pretraining report", "pretrain/report.html"),
        ("RL report", "rl/report.html"), ("evaluation (JSON)", "evaluation.json"),
        ("exported Hugging Face checkpoint", "hf/config.json"), ("pipeline state (JSON)", "pipeline.json"),
    ) if (run_dir / path).exists()]
    return Section("Pipeline", [Table(["stage", "wall time", "result"], rows), Links(links)])


def _bpb_notes(results: dict[str, dict[str, Any]], bpb: dict[str, dict[str, float]]) -> list[str]:
    """Why these figures differ from the pretraining summary's, and why RL raises them."""
    evaluation, pretrain = results.get("evaluate", {}), results.get("pretrain", {})
    notes = []
    tokens, train_tokens = evaluation.get("eval_tokens"), pretrain.get("eval_tokens")
    where = f" at step {pretrain['eval_step']}" if pretrain.get("eval_step") is not None else ""
    if tokens and train_tokens:
        notes.append(f"Measured on the exported checkpoints with up to {tokens:,} held-out tokens per group. The "
                     f"pretraining summary below shows the training run's own last evaluation{where}, on up to "
                     f"{train_tokens:,} tokens per group of the same held-out sets"
                     + (": a different sample, hence slightly different figures." if tokens != train_tokens else "."))
    else:
        notes.append("Measured on the exported checkpoints; the pretraining summary below shows the training run's "
                     "own last evaluation, on its own (usually smaller) sample of the same held-out sets.")
    before, after = bpb.get("pretrained", {}), bpb.get("after RL", {})
    worse = [g for g in before if g in after and after[g] > before[g]]
    if worse:
        notes.append(f"Bits per byte rise after RL in {'every group' if len(worse) == len(before) else ', '.join(worse)}: "
                     "the SFT warm-up and RL train the whole small model on arith-code agent transcripts only, so it "
                     "specializes on that task and format and loses some of its fit to the pretraining text. RL is "
                     "judged by the held-out arith-code reward below, not by bits per byte.")
    return notes


def _evaluation(results: dict[str, dict[str, Any]]) -> Section | None:
    evaluation = results.get("evaluate")
    if not evaluation:
        return None
    blocks: list = []
    bpb = evaluation.get("bpb", {})
    groups = sorted({group for values in bpb.values() for group in values})
    if groups:
        blocks.append(Table(["model", *groups], [[name, *(_fmt(values.get(g)) for g in groups)]
                                                for name, values in bpb.items()],
                            caption="held-out bits per byte per capability group (lower is better)"))
        blocks += [Text(note) for note in _bpb_notes(results, bpb)]
    reward = evaluation.get("arith_code_reward")
    if reward:
        start = results.get("rl", {}).get("reward_before_policy")
        labels = {"before RL": "start of RL" + (f" ({start})" if start else ""), "after RL": "after RL"}
        blocks.append(Table(["policy", "held-out arith-code reward"],
                            [[labels.get(k, k), _fmt(v)] for k, v in reward.items()]))
        if all(isinstance(v, float) for v in reward.values()):
            figure, (axis,) = new_figure(1, width=5, height=2.8)
            axis.bar([labels.get(k, k) for k in reward], list(reward.values()), color=["#7f8c9d", "#2a7ab0"])
            axis.set_ylabel("mean reward")
            axis.set_ylim(0, 1)
            blocks.append(render(figure, "held-out arith-code reward at the start of RL and after it"))
        if start == "after the SFT warm-up":
            blocks.append(Text("The start-of-RL reward is the policy after the SFT warm-up on arith-code transcripts. "
                               "The exported pretrained checkpoint itself has never seen the harness's format and "
                               "scores about 0 on the same tasks (`lagoon rl eval CONFIG --run-dir DIR --checkpoint "
                               "RUN/hf` measures it)."))
    parity = evaluation.get("transformers_max_abs_logit_diff")
    if parity is not None:
        blocks.append(Text(f"The exported checkpoint loads in transformers' LagunaForCausalLM; max |logit "
                           f"difference| against lagoon on held-out text: {parity:.2e}."))
    return Section("Evaluation", blocks)


def _stage_sections(run_dir: Path) -> list[Section]:
    from lagoon.report import build_sections
    from lagoon.report.runs import load_runs

    sections: list[Section] = []
    automix_dir = run_dir / "automix"
    if (automix_dir / "optimized.json").is_file():
        from lagoon.automix.report import report_sections

        for section in report_sections(automix_dir):
            section.title = f"AutoMixer: {section.title}"
            sections.append(section)
    for name, label in (("pretrain", "Pretraining"), ("rl", "RL")):
        path = run_dir / name
        if (path / "metrics.jsonl").is_file():
            for section in build_sections(load_runs(path)):
                section.title = f"{label}: {section.title}"
                sections.append(section)
    return sections


def write_report(run_dir: str | Path, results: dict[str, dict[str, Any]]) -> Path:
    from lagoon.report import build_report
    from lagoon.report.html import render_page

    run_dir = Path(run_dir)
    for name in ("pretrain", "rl"):  # each stage's own page, linked from this one
        if (run_dir / name / "metrics.jsonl").is_file():
            build_report(run_dir / name)
    sections = [_summary(run_dir, results)]
    evaluation = _evaluation(results)
    if evaluation is not None:
        sections.append(evaluation)
    sections.extend(_stage_sections(run_dir))
    page = render_page("lagoon: the main job", f"{run_dir}", sections)
    target = run_dir / REPORT_FILE
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    staging.write_text(page)
    staging.replace(target)
    return target
