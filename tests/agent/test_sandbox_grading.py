"""Grading never scores its own infrastructure: a grader that cannot run (pytest missing from the sandbox's
Python, a sandbox that cannot start) raises GradingError and stops `lagoon agent eval` with one line and a
non-zero exit, before any model time is spent; a submission that breaks the test process still scores 0."""

from __future__ import annotations

import dataclasses
import json
import stat
import subprocess
import sys

import pytest

from lagoon.agent.config import SandboxConfig
from lagoon.agent.grading import GradingError, apply_reference, check_grader, grade, grading_config
from lagoon.agent.tasks import load_task_set
from tests.agent.scripted_server import ScriptedChatServer

TASK = next(task for task in load_task_set("pybugs") if task.id == "pybugs/paginate-last-page")


@pytest.fixture(scope="module")
def python_without_pytest(tmp_path_factory):
    """A real virtualenv of this interpreter without pytest: a sandbox Python the grader cannot use."""
    venv = tmp_path_factory.mktemp("nopytest") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return venv


@pytest.mark.timeout(120)
def test_a_grader_without_pytest_is_an_error_not_a_zero(tmp_path, python_without_pytest):
    config = SandboxConfig(python=str(python_without_pytest))
    with pytest.raises(GradingError, match=r"self-check.*No module named 'pytest'.*agent\.sandbox\.python") as caught:
        check_grader(grading_config(TASK, config))
    assert "\n" not in str(caught.value)
    fixed = TASK.prepare_workspace(tmp_path / "fixed")
    apply_reference(TASK, fixed)
    with pytest.raises(GradingError):  # even a correct fix: no verdict at all, rather than a false 0
        grade(TASK, fixed, sandbox_config=config)


@pytest.mark.timeout(60)
def test_a_sandbox_that_cannot_start_is_a_grading_error(tmp_path):
    broken = tmp_path / "bwrap"
    broken.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(GradingError, match="its sandbox failed: bubblewrap cannot create a sandbox"):
        check_grader(grading_config(TASK, SandboxConfig(bwrap=str(broken))))


@pytest.mark.timeout(120)
def test_a_submission_that_kills_the_test_process_scores_zero(tmp_path):
    workspace = TASK.prepare_workspace(tmp_path / "ws")
    apply_reference(TASK, workspace)
    module = next(path for path in workspace.rglob("*.py") if "tests" not in path.parts)
    module.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n" + module.read_text())
    verdict = grade(TASK, workspace)  # the grader itself works: its self-check passes
    assert verdict.reward == 0.0 and not verdict.resolved
    assert verdict.details["runner"] == "killed by SIGKILL", verdict.details


def fixing_policy(messages: list[dict]) -> str:
    """A scripted model that fixes every pybugs task: the task's reference files first, then it submits."""
    if len(messages) > 2:
        return "Fixed.\nANSWER: done"
    task = next(task for task in load_task_set("pybugs") if task.instruction == messages[1]["content"])
    fix = {str(p.relative_to(task.reference_dir)): p.read_text() for p in task.reference_dir.rglob("*.py")}
    return ("```python\nfiles = " + repr(fix) + "\nfor path, text in files.items():\n"
            "    open(path, 'w').write(text)\n```")


@pytest.mark.timeout(240)
def test_eval_stops_with_one_line_when_the_grader_cannot_run(tmp_path, capsys, python_without_pytest):
    from lagoon.cli import main

    out = tmp_path / "eval"
    with ScriptedChatServer([fixing_policy] * 4) as server:
        code = main(["agent", "eval", "--tasks", "pybugs", "--limit", "2", "--model", server.base_url,
                     "--out", str(out), "--set", f'agent.sandbox.python="{python_without_pytest}"'])
        requests = len(server.requests)
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(error) == 1 and error[0].startswith("lagoon: error: the grader cannot run:"), error
    assert requests == 0  # checked before the first episode: no model time spent
    assert not (out / "results.jsonl").exists() and not (out / "trajectories").exists()  # nothing half-written

    # With a working grader the same evaluation resolves both tasks.
    with ScriptedChatServer([fixing_policy] * 4) as server:
        code = main(["agent", "eval", "--tasks", "pybugs", "--limit", "2", "--model", server.base_url,
                     "--out", str(out)])
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert code == 0 and len(results) == 2 and all(r["reward"] == 1.0 and r["resolved"] for r in results), results


def test_grading_config_applies_the_tasks_timeout():
    config = grading_config(TASK, SandboxConfig(cpu_seconds=5))
    assert config.wall_timeout_s == TASK.grading.timeout_s and config.cpu_seconds >= int(TASK.grading.timeout_s) + 1
    assert dataclasses.replace(config, wall_timeout_s=1.0) != config
