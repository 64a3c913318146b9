"""What a reader of a report must be able to tell: which run an event belongs to, what an RL loss and token count
are, which policy each held-out figure measured, why two bits-per-byte figures differ, and where the
repetition caps and the per-fold quality went."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

from lagoon.report import build_report
from lagoon.train.metrics import MetricsWriter
from tests.report.test_report import _fake_run

AUTOMIX_QUICK = Path(__file__).parent / "data" / "automix_quick"
"""plan/fit/optimized.json of a real `lagoon automix run` of configs/demo_quick.toml (4 proxies, 2 folds)."""


def _text(page: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def test_event_tables_name_a_single_run_by_its_directory(tmp_path):
    _fake_run(tmp_path / "pretrain", seed=0, speed=0.1)
    page = build_report(tmp_path / "pretrain").read_text()
    events = page[page.index(">Events<"):]
    assert "<td>pretrain</td><td>checkpoint_skipped</td>" in events.replace("\n", "")
    assert "<td>.</td>" not in page


def _fake_rl_run(run) -> None:
    run.mkdir(parents=True)
    writer = MetricsWriter(run, active=True)
    for step in range(1, 4):
        writer.write({"step": step, "loss": -0.02 * step, "loss_tokens": 100 * step, "reward_mean": 0.3 + 0.1 * step,
                      "lr": 1e-4, "grad_norm": 0.5, "tokens_per_s": 50.0, "staleness_hist": {"0": 4},
                      "staleness_mean": 0.0, "staleness_max": 0, "dropped_stale": 0})
    writer.close()
    (run / "eval_before.json").write_text(json.dumps({"reward_mean": 0.391, "episodes": 8,
                                                      "policy": "after the SFT warm-up"}))
    (run / "eval_after.json").write_text(json.dumps({"reward_mean": 0.92, "episodes": 8}))
    (run / "actors").mkdir()
    (run / "actors" / "actor-0.health.json").write_text(json.dumps({
        "episodes": 40, "model_failures": 7, "infra": {"server": 3, "sandbox": 1, "harness": 0, "append": 2},
        "retries": 5, "consecutive": 0, "last_error": "server: PolicyError: timed out", "stopped": None}))


def test_an_rl_run_says_what_its_loss_tokens_and_held_out_figures_are(tmp_path):
    _fake_rl_run(tmp_path / "rl")
    text = _text(build_report(tmp_path / "rl").read_text())
    assert "Training cross-entropy" not in text and "CISPO's surrogate loss per step" in text
    summary = text[text.index("Summary"):]
    assert re.search(r"rl 3 600 -0\.0600", summary), summary[:400]        # tokens: 100 + 200 + 300
    assert "held-out reward: start of RL → after" in text and "0.391 → 0.920" in text
    assert "the start of RL is after the SFT warm-up" in text
    # Infrastructure failures apart from the model's own.
    assert re.search(r"rl actor-0 40 7 3 1 0 2 5 –", text), text
    assert "server failures" in text and "append failures" in text


def test_the_main_job_report_labels_its_figures(tmp_path):
    from lagoon.demo.report import write_report

    results = {
        "pretrain": {"eval_bpb": {"code": 1.969}, "eval_step": 300, "eval_tokens": 8192},
        "rl": {"reward_before": 0.391, "reward_after": 0.92, "reward_before_policy": "after the SFT warm-up"},
        "evaluate": {"bpb": {"pretrained": {"code": 1.890, "math": 0.366}, "after RL": {"code": 2.1, "math": 0.896}},
                     "eval_tokens": 16384, "arith_code_reward": {"before RL": 0.391, "after RL": 0.92}},
    }
    text = _text(write_report(tmp_path, results).read_text())
    assert "up to 16,384 held-out tokens per group" in text and "last evaluation at step 300, on up to 8,192" in text
    assert "a different sample" in text
    assert "Bits per byte rise after RL in every group" in text and "specializes" in text
    assert "start of RL (after the SFT warm-up) 0.391" in text and "scores about 0" in text


def test_automix_sections_show_caps_above_the_chart_and_explain_an_empty_per_fold_column(tmp_path):
    from lagoon.automix.report import report_sections
    from lagoon.report.html import render_page

    plan = json.loads((AUTOMIX_QUICK / "plan.json").read_text())
    optimized = json.loads((AUTOMIX_QUICK / "optimized.json").read_text())
    top = min(1.0, 1.15 * max(max(weights.values()) for weights in optimized["mixes"].values()))
    above = sum(min(cap, 1.0) > top for cap in plan["caps"])
    # The case the chart used to lose: caps of 1.0 (and these at 0.65-0.91) lie above a chart that ends near 0.5.
    assert top < 0.6 and above == len(plan["caps"])
    text = _text(render_page("t", "s", report_sections(AUTOMIX_QUICK)))
    assert "per fold" not in text and "no per-fold Spearman: each of the 2 folds holds fewer than 3 proxies" in text
    assert f"mark the {above} leaves whose cap lies above the chart" in text
