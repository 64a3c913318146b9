"""The main job as users run it: `lagoon demo configs/demo_quick.toml --run-dir DIR`, every stage, then a
rerun that skips them all, then a rerun with a different config that is refused."""

from __future__ import annotations

import json
import re
import sys

import pytest

from lagoon.demo.config import STAGES
from tests.conftest import ROOT, assert_one_line_error, run_lagoon


@pytest.mark.timeout(600)
def test_quick_demo_runs_every_stage_resumes_and_refuses_a_changed_config(tmp_path):
    run_dir = tmp_path / "demo"
    config = str(ROOT / "configs" / "demo_quick.toml")
    first = run_lagoon("demo", config, "--run-dir", str(run_dir), timeout=560)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]

    state = json.loads((run_dir / "pipeline.json").read_text())
    assert list(state["stages"]) == list(STAGES)
    assert all(entry["status"] == "done" for entry in state["stages"].values())

    # AutoMixer wrote a mixture that pretraining read, on two ranks, with the injected fault caught.
    automix = state["stages"]["automix"]["summary"]
    mixture = (run_dir / "automix" / "mixture.toml").read_text()
    assert automix["mixture_file"].endswith("mixture.toml") and "weights" in mixture
    pretrain = state["stages"]["pretrain"]["summary"]
    assert pretrain["ranks"] == 2 and pretrain["steps"] == 24 and pretrain["sdc_checks"] >= 6
    assert pretrain["sdc_injected"] == 1 and pretrain["sdc_rollbacks"] >= 1 and pretrain["sdc_events"]
    pretrain_config = (run_dir / "pretrain.toml").read_text()
    assert str(run_dir / "automix" / "mixture.toml") in pretrain_config

    # The exported directory is a Hugging Face Laguna checkpoint that RL started from.
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(state["stages"]["export"]["summary"]["files"])
    rl = state["stages"]["rl"]["summary"]
    assert rl["init_checkpoint"] == str(run_dir / "hf") and rl["version"] == 3
    assert 0.0 <= rl["reward_before"] <= 1.0 and 0.0 <= rl["reward_after"] <= 1.0

    # Evaluation measured both models on every group, and transformers reads the export identically.
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert set(evaluation["bpb"]) == {"pretrained", "after RL"}
    groups = set(evaluation["bpb"]["pretrained"])
    assert groups == {"code", "general", "math", "stem"}
    assert all(0.5 < value < 12 for row in evaluation["bpb"].values() for value in row.values())
    assert evaluation["bpb"]["pretrained"] != evaluation["bpb"]["after RL"]   # RL changed the weights
    assert evaluation["transformers_max_abs_logit_diff"] < 1e-4

    # One self-contained page links every stage's own report and embeds their figures.
    page = (run_dir / "report.html").read_text()
    for heading in ("AutoMixer: Mixtures compared", "Pretraining: Training loss", "Pretraining: SDC checks",
                    "RL: Reward", "Evaluation"):
        assert heading in page, heading
    assert len(re.findall(r"data:image/png;base64,", page)) >= 8
    for link in ("automix/report.html", "pretrain/report.html", "rl/report.html", "evaluation.json"):
        assert f'href="{link}"' in page, link
        assert (run_dir / link).is_file(), link

    # A rerun skips every finished stage and leaves their results alone, even when the run was started by
    # a lagoon that lacked a config field added since (it reads back with the field's default).
    started = (run_dir / "config.toml").read_text()
    assert "\nmax_batch_size = " in started
    (run_dir / "config.toml").write_text("\n".join(line for line in started.splitlines()
                                                   if not line.startswith("max_batch_size = ")) + "\n")
    report_written = (run_dir / "report.html").stat().st_mtime_ns
    again = run_lagoon("demo", config, "--run-dir", str(run_dir), timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("skipped") == len(STAGES)       # the report too: nothing before it ran
    rerun = json.loads((run_dir / "pipeline.json").read_text())
    assert {name: entry["finished"] for name, entry in rerun["stages"].items()} == \
        {name: entry["finished"] for name, entry in state["stages"].items()}
    assert (run_dir / "report.html").stat().st_mtime_ns == report_written

    # The same run directory with a different config is refused in one line, nothing touched.
    before = (run_dir / "pipeline.json").read_bytes()
    changed = run_lagoon("demo", config, "--run-dir", str(run_dir), "--set", "train.steps=30", timeout=120)
    assert_one_line_error(changed, "different config")
    assert (run_dir / "pipeline.json").read_bytes() == before


def test_bad_stage_names_and_orders_are_one_line_errors(tmp_path):
    config = str(ROOT / "configs" / "demo_quick.toml")
    unknown = run_lagoon("demo", config, "--run-dir", str(tmp_path / "x"), "--set", 'demo.stages=["data","train"]')
    assert_one_line_error(unknown, "demo.stages[1]", "unknown stage")
    order = run_lagoon("demo", config, "--run-dir", str(tmp_path / "y"), "--set", 'demo.stages=["pretrain","data"]')
    assert_one_line_error(order, "demo.stages", "pipeline order")
    early = run_lagoon("demo", config, "--run-dir", str(tmp_path / "z"), "--only", "rl")
    assert_one_line_error(early, "stage rl needs data, automix, pretrain, export finished first")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_a_finished_report_is_skipped_unless_asked_for(tmp_path):
    config = str(ROOT / "configs" / "demo_quick.toml")
    run_dir = tmp_path / "r"
    only_report = ("--set", 'demo.stages=["report"]')
    first = run_lagoon("demo", config, "--run-dir", str(run_dir), *only_report, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    written = (run_dir / "report.html").stat().st_mtime_ns
    again = run_lagoon("demo", config, "--run-dir", str(run_dir), *only_report, timeout=300)
    assert again.returncode == 0 and "report: done earlier" in again.stdout, again.stdout[-2000:]
    assert (run_dir / "report.html").stat().st_mtime_ns == written
    asked = run_lagoon("demo", config, "--run-dir", str(run_dir), *only_report, "--only", "report", timeout=300)
    assert asked.returncode == 0 and "skipped" not in asked.stdout, asked.stdout[-2000:]
    assert (run_dir / "report.html").stat().st_mtime_ns > written


def test_a_missing_transformers_stops_the_pipeline_before_its_first_stage(tmp_path, monkeypatch):
    from lagoon.config import load_config
    from lagoon.demo.pipeline import run_pipeline
    from lagoon.errors import ConfigError

    monkeypatch.setitem(sys.modules, "transformers", None)   # as if it were not installed: import fails
    config = load_config(ROOT / "configs" / "demo_quick.toml")
    with pytest.raises(ConfigError, match=r"demo\.check_transformers: .*transformers is not installed"):
        run_pipeline(config, tmp_path / "run", say=lambda _: None)
    assert not (tmp_path / "run").exists()
    # Asked not to compare, the pipeline does not need it.
    skip = load_config(ROOT / "configs" / "demo_quick.toml", ["demo.check_transformers=false", 'demo.stages=["data"]'])
    from lagoon.demo.stages import require_transformers

    require_transformers(skip)
