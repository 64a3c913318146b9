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

A grader that cannot run is not a submission that fails: before the first grade with a given sandbox
configuration (and again after any failure), the runner grades a known canary (one passing and one failing test) with no agent code
involved. If that self-check fails (pytest missing from the sandbox's Python, a sandbox that cannot start,
a runner that crashes), or a grading sandbox later fails to start, or the host cannot copy a workspace,
grading raises `GradingError`, which stops an evaluation with one line instead of scoring the episode 0.
Once the self-check has passed, a run that leaves no report is the submission's doing (it killed or hung
the test process) and scores 0.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lagoon.agent.config import SandboxConfig
from lagoon.agent.sandbox import RunResult, Sandbox, SandboxError
from lagoon.agent.tasks import Task
from lagoon.agent.workspace import copy_tree, open_regular_for_reading, remove_tree
from lagoon.errors import LagoonError

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
_CANARY = "def test_passes():\n    assert True\n\n\ndef test_fails():\n    assert False\n"
_CANARY_OUTCOMES = {"tests/test_canary.py::test_passes": "passed", "tests/test_canary.py::test_fails": "failed"}


class GradingError(LagoonError):
    """The grader itself could not run (its sandbox, its test runner, the host): an infrastructure failure,
    never a verdict on the submission."""

    exit_code = 1


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


def grading_config(task: Task, sandbox_config: SandboxConfig | None = None) -> SandboxConfig:
    """The sandbox configuration the hidden tests of `task` run under."""
    base = task.sandbox_config(sandbox_config or SandboxConfig())
    return dataclasses.replace(base, wall_timeout_s=task.grading.timeout_s,
                               cpu_seconds=max(base.cpu_seconds, int(task.grading.timeout_s) + 1),
                               output_head_chars=4000, output_tail_chars=4000)


def _run_runner(workspace: Path, scratch: Path, config: SandboxConfig) -> tuple[dict[str, Any], RunResult]:
    """Run the hidden-test runner over `workspace` (which holds ``tests/``) in a fresh sandbox; (report, result)."""
    grader = scratch / "grader"
    grader.mkdir()
    (grader / "run_tests.py").write_text(_RUNNER)
    (grader / "pytest.ini").write_text(_PYTEST_INI)
    sandbox = Sandbox(workspace, config, extra_ro_mounts=[(str(grader), GRADER_MOUNT)])
    result = sandbox.run(["python3", "-I", f"{GRADER_MOUNT}/run_tests.py", sandbox.workdir,
                          f"{sandbox.workdir}/{RESULTS_FILE}"],
                         env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}, name="grade")
    report: dict[str, Any] = {}
    fd = open_regular_for_reading(workspace / RESULTS_FILE)
    if fd is not None:
        with open(fd, "rb") as handle:
            try:
                report = json.loads(handle.read(16 << 20))
            except (json.JSONDecodeError, UnicodeDecodeError):
                report = {}
    return (report if isinstance(report, dict) else {}), result


_passed: set[str] = set()
_checked_lock = threading.Lock()


def check_grader(config: SandboxConfig) -> None:
    """Raise `GradingError` unless the hidden-test runner grades a canary correctly under `config`. A pass is
    remembered per configuration for the process; a failure is not, so a long-lived actor checks again."""
    key = json.dumps(dataclasses.asdict(config), sort_keys=True)
    with _checked_lock:  # concurrent first callers wait for one check
        problem = None if key in _passed else _self_check(config)
        if problem is None:
            _passed.add(key)
    if problem is not None:
        raise GradingError(f"the grader cannot run: {problem}")


def _self_check(config: SandboxConfig) -> str | None:
    with tempfile.TemporaryDirectory(prefix="lagoon-grader-check-") as scratch:
        workspace = Path(scratch) / "workspace"
        (workspace / "tests").mkdir(parents=True)
        (workspace / "tests" / "test_canary.py").write_text(_CANARY)
        try:
            report, result = _run_runner(workspace, Path(scratch), config)
        except SandboxError as error:
            return f"its sandbox failed: {error}"
        finally:
            remove_tree(workspace)  # the sandbox's user may own files here that the directory's cleanup cannot remove
    if report.get("outcomes") == _CANARY_OUTCOMES:
        return None
    output = (result.stderr.strip() or result.stdout.strip()).splitlines()
    why = output[-1] if output else (result.describe_end() or "no report")
    python = config.python if config.python != "host" else f"host: {sys.prefix}"
    return (f"the hidden-test runner failed its self-check in the sandbox ({why}); it needs pytest in the "
            f"sandbox's Python (agent.sandbox.python = {python})")


def run_hidden_tests(task: Task, workspace: Path, sandbox_config: SandboxConfig | None = None) -> Grade:
    """Copy `workspace`, put the hidden tests in, run them in a fresh sandbox, apply FAIL_TO_PASS/PASS_TO_PASS.

    Raises `GradingError` when the grader cannot run (see the module docstring)."""
    assert task.hidden_tests_dir is not None
    config = grading_config(task, sandbox_config)
    check_grader(config)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lagoon-grade-") as scratch:
        scratch = Path(scratch)
        copy = scratch / "workspace"
        try:
            try:
                copy_tree(workspace, copy, skip={"tests", ".lagoon", RESULTS_FILE})
            except OSError as error:
                if error.errno is None:  # copy_tree's size limit: the submission filled its workspace
                    return Grade(reward=0.0, resolved=False, details={"error": str(error)})
                raise
            copy_tree(task.hidden_tests_dir, copy / "tests")
            report, result = _run_runner(copy, scratch, config)
        except SandboxError as error:
            raise GradingError(f"grading {task.id}: {error}") from None
        except OSError as error:
            raise GradingError(f"grading {task.id}: {error}") from None
        finally:
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
