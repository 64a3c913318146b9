"""Grading: exact answers, and hidden tests run in a fresh sandbox with fail-to-pass / pass-to-pass semantics.

A repo task is resolved when every fail-to-pass test and every pass-to-pass test passes (the SWE-bench
harness's rule); the reward is 1.0 then, else 0.0. The hidden run is built so that a submission cannot pass
by touching the tests:

- the agent's final workspace is copied (links kept as links, FIFOs and devices dropped) into a fresh
  directory, its ``tests/`` directory is deleted and the task's hidden ``tests/`` put in its place;
- pytest runs in a new sandbox under ``python3 -I`` (no current directory or PYTHON* variables on the path),
  with lagoon's own ini file (``-c``), ``--noconftest`` and plugin autoloading off, so a ``conftest.py``,
  ``pytest.ini``, ``setup.cfg``, ``sitecustomize.py`` or a ``pytest.py`` shim in the workspace has no effect;
- outcomes are collected per test id by a plugin of the runner and each listed test must have run and
  passed: a deleted, renamed or uncollectable test counts as failed.

What this cannot stop is code under test that tampers with the test process itself (as with SWE-bench):
the hidden tests run in the same interpreter as the code they test.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lagoon.agent.config import SandboxConfig
from lagoon.agent.sandbox import Sandbox
from lagoon.agent.tasks import Task
from lagoon.agent.workspace import copy_tree, open_regular_for_reading, remove_tree

GRADER_MOUNT = "/grader"
RESULTS_FILE = ".lagoon-grade.json"

_RUNNER = r'''
"""lagoon's hidden-test runner: pytest with a result-collecting plugin; writes {test id: outcome}."""
import json, os, sys

import pytest  # imported before the workspace joins sys.path, so a pytest.py there cannot shadow it

WORKSPACE, RESULTS = sys.argv[1], sys.argv[2]


class Collect:
    def __init__(self):
        self.outcomes, self.errors = {}, []

    def pytest_runtest_logreport(self, report):
        # A test passes only if its setup, call and teardown all pass.
        if report.failed:
            self.outcomes[report.nodeid] = "failed"
        elif report.skipped:
            self.outcomes.setdefault(report.nodeid, "skipped")
        elif report.when == "call":
            self.outcomes.setdefault(report.nodeid, "passed")

    def pytest_collectreport(self, report):
        if report.failed:
            self.errors.append(report.nodeid)


collect = Collect()
sys.path.insert(0, WORKSPACE)
os.chdir(WORKSPACE)
code = pytest.main(["-q", "-p", "no:cacheprovider", "--noconftest", "-c", os.path.join(os.path.dirname(__file__), "pytest.ini"),
                    "--rootdir", WORKSPACE, "tests"], plugins=[collect])
with open(RESULTS, "w") as handle:
    json.dump({"outcomes": collect.outcomes, "collection_errors": collect.errors, "exit_code": int(code)}, handle)
'''

_PYTEST_INI = "[pytest]\naddopts =\ntestpaths = tests\npython_files = test_*.py\n"


@dataclass
class Grade:
    """The grader's verdict on one episode."""

    reward: float
    resolved: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"reward": self.reward, "resolved": self.resolved, "details": self.details}


def normalize_answer(text: str | None) -> str | None:
    """Answers compare exactly after trimming surrounding whitespace."""
    return None if text is None else text.strip()


def grade(task: Task, workspace: str | Path | None, submission: str | None = None,
          sandbox_config: SandboxConfig | None = None) -> Grade:
    """Grade an episode's outcome: the submitted answer (kind "answer") or the final workspace (kind "repo")."""
    if task.kind == "answer":
        expected, got = normalize_answer(task.grading.expected), normalize_answer(submission)
        resolved = got is not None and got == expected
        return Grade(reward=1.0 if resolved else 0.0, resolved=resolved,
                     details={"expected": expected, "submitted": got})
    assert workspace is not None, "a repo task is graded on its workspace"
    return run_hidden_tests(task, Path(workspace), sandbox_config)


def run_hidden_tests(task: Task, workspace: Path, sandbox_config: SandboxConfig | None = None) -> Grade:
    """Copy `workspace`, put the hidden tests in, run them in a fresh sandbox, apply FAIL_TO_PASS/PASS_TO_PASS."""
    assert task.hidden_tests_dir is not None
    base = task.sandbox_config(sandbox_config or SandboxConfig())
    config = dataclasses.replace(base, wall_timeout_s=task.grading.timeout_s,
                                 cpu_seconds=max(base.cpu_seconds, int(task.grading.timeout_s) + 1),
                                 output_head_chars=4000, output_tail_chars=4000)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lagoon-grade-") as scratch:
        scratch = Path(scratch)
        copy = scratch / "workspace"
        copy_tree(workspace, copy, skip={"tests", ".lagoon", RESULTS_FILE})
        copy_tree(task.hidden_tests_dir, copy / "tests")
        grader = scratch / "grader"
        grader.mkdir()
        (grader / "run_tests.py").write_text(_RUNNER)
        (grader / "pytest.ini").write_text(_PYTEST_INI)
        sandbox = Sandbox(copy, config, extra_ro_mounts=[(str(grader), GRADER_MOUNT)])
        result = sandbox.run(["python3", "-I", f"{GRADER_MOUNT}/run_tests.py", sandbox.workdir,
                              f"{sandbox.workdir}/{RESULTS_FILE}"],
                             env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}, name="grade")
        report: dict[str, Any] = {}
        fd = open_regular_for_reading(copy / RESULTS_FILE)
        if fd is not None:
            with open(fd, "rb") as handle:
                try:
                    report = json.loads(handle.read(16 << 20))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    report = {}
        remove_tree(copy)
    outcomes: dict[str, str] = report.get("outcomes", {}) if isinstance(report.get("outcomes"), dict) else {}
    f2p = {test: outcomes.get(test, "missing") for test in task.grading.fail_to_pass}
    p2p = {test: outcomes.get(test, "missing") for test in task.grading.pass_to_pass}
    resolved = all(v == "passed" for v in f2p.values()) and all(v == "passed" for v in p2p.values())
    details = {
        "fail_to_pass": f2p, "pass_to_pass": p2p,
        "tests_passed": sum(v == "passed" for v in outcomes.values()), "tests_run": len(outcomes),
        "collection_errors": report.get("collection_errors", []),
        "runner": "ok" if report else (result.describe_end() or "no report"),
        "timed_out": result.timed_out, "duration_s": round(time.perf_counter() - started, 3),
        "output_tail": (result.stdout + result.stderr)[-2000:] if not resolved else "",
    }
    return Grade(reward=1.0 if resolved else 0.0, resolved=resolved, details=details)


def apply_reference(task: Task, workspace: Path) -> None:
    """Overlay the task's reference solution onto `workspace` (validation only; never done for an agent)."""
    assert task.reference_dir is not None, f"{task.id} has no reference solution"
    shutil.copytree(task.reference_dir, workspace, dirs_exist_ok=True)
