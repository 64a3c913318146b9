"""Every pybugs task fails on its original code and passes with its reference fix, graded in the sandbox,
and a submission that edits or deletes the tests cannot pass."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lagoon.agent.grading import apply_reference, grade
from lagoon.agent.tasks import load_task, load_task_set

TASKS = load_task_set("pybugs")


def test_the_set_is_large_and_varied():
    assert len(TASKS) >= 20
    assert len({task.metadata["category"] for task in TASKS}) >= 12
    for task in TASKS:
        assert task.kind == "repo" and task.grading.fail_to_pass and task.grading.pass_to_pass
        assert task.reference_dir is not None and task.hidden_tests_dir is not None
        assert "## Issue" in task.instruction
        # The agent's starting files hold neither the hidden tests' new cases nor the reference fix.
        for hidden in task.hidden_tests_dir.rglob("*.py"):
            visible = task.workspace_dir / "tests" / hidden.name
            assert visible.read_text() != hidden.read_text()
        for fixed in task.reference_dir.rglob("*.py"):
            original = task.workspace_dir / fixed.relative_to(task.reference_dir)
            assert original.read_text() != fixed.read_text()


def _grade_both(task, tmp_path: Path):
    original = task.prepare_workspace(tmp_path / task.id.replace("/", "_") / "original")
    fixed = task.prepare_workspace(tmp_path / task.id.replace("/", "_") / "fixed")
    apply_reference(task, fixed)
    return grade(task, original), grade(task, fixed)


@pytest.mark.timeout(170)
def test_every_task_fails_before_and_passes_after_its_reference_fix(tmp_path):
    with ThreadPoolExecutor(max_workers=2) as pool:
        verdicts = list(pool.map(lambda task: _grade_both(task, tmp_path), TASKS))
    problems = []
    for task, (before, after) in zip(TASKS, verdicts):
        if before.resolved or any(v == "passed" for v in before.details["fail_to_pass"].values()):
            problems.append(f"{task.id}: a fail-to-pass test passes on the original code: {before.details}")
        if any(v != "passed" for v in before.details["pass_to_pass"].values()):
            problems.append(f"{task.id}: a pass-to-pass test fails on the original code: {before.details}")
        if not after.resolved or after.reward != 1.0:
            problems.append(f"{task.id}: the reference fix does not resolve it: {after.details}")
    assert not problems, "\n".join(problems)


CHEATS = {
    "delete the tests": lambda ws: shutil.rmtree(ws / "tests"),
    "rewrite the tests": lambda ws: [p.write_text("def test_ok():\n    assert True\n") for p in (ws / "tests").glob("test_*.py")],
    "conftest that skips everything": lambda ws: (ws / "conftest.py").write_text(
        "import pytest\n\ndef pytest_collection_modifyitems(items):\n    for item in items:\n"
        "        item.add_marker(pytest.mark.skip)\n"),
    "ini that deselects everything": lambda ws: (ws / "pytest.ini").write_text("[pytest]\naddopts = -k nothing_matches\n"),
    "a pytest.py shim": lambda ws: (ws / "pytest.py").write_text("import sys\nprint('all passed')\nsys.exit(0)\n"),
    "sitecustomize": lambda ws: (ws / "sitecustomize.py").write_text("import os\nos._exit(0)\n"),
    "a forged results file": lambda ws: (ws / ".lagoon-grade.json").write_text('{"outcomes": {}}'),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cheat", sorted(CHEATS))
def test_editing_or_deleting_the_tests_cannot_pass(cheat, tmp_path):
    task = load_task(Path(TASKS[0].workspace_dir).parent)
    workspace = task.prepare_workspace(tmp_path / "ws")
    CHEATS[cheat](workspace)
    verdict = grade(task, workspace)
    assert not verdict.resolved and verdict.reward == 0.0, verdict.details
