"""`lagoon report` shows an "SDC checks" section built from metrics.jsonl and events.jsonl."""

from __future__ import annotations

import json

from lagoon.report import build_report


def test_report_has_an_sdc_section_with_counts_figure_and_events(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    metrics = [{"step": s, "loss": 5.0 - 0.1 * s, "sdc/checks": float(s // 2), "sdc/skipped_steps": 0.0,
                **({"sdc/check_ms": 1.5} if s % 2 == 0 else {})} for s in range(1, 9)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    events = [
        {"event": "checkpoint", "step": 2, "path": "checkpoints/step_00000002"},
        {"event": "sdc_corruption", "step": 4, "ranks": [2], "hosts": ["node-7"],
         "parameters": ["model.layers.0.self_attn.q_proj.weight"], "action": "rollback"},
        {"event": "rollback", "from_step": 4, "step": 2, "reason": "sdc"},
        {"event": "sdc_recovered", "step": 4, "digest": "ab", "matches_healthy": True},
    ]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    html = build_report(run).read_text()
    section = html[html.index("SDC checks"):]
    assert "corruption ×1" in section and "recovered ×1" in section
    assert "2 (node-7)" in section and "model.layers.0.self_attn.q_proj.weight" in section
    assert "data:image/png;base64" in section


def test_runs_without_sdc_have_no_sdc_section(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 3.0}) + "\n")
    assert "SDC checks" not in build_report(tmp_path).read_text()
