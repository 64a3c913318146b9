"""arith-code: seeded and reproducible, four levels, and the supervised transcripts' observations are what
the sandbox really prints for the reference programs."""

from __future__ import annotations

import pytest

from lagoon.agent.arith import LEVELS, generate_tasks, solution_messages, supervised_examples
from lagoon.agent.config import SandboxConfig
from lagoon.agent.grading import grade
from lagoon.agent.prompts import format_observation
from lagoon.agent.sandbox import Sandbox
from lagoon.agent.tasks import load_task, load_task_set


def test_seeded_and_reproducible():
    assert [t.instruction for t in generate_tasks(20, level=2, seed=3)] == \
        [t.instruction for t in generate_tasks(20, level=2, seed=3)]
    assert [t.instruction for t in generate_tasks(20, level=2, seed=3)] != \
        [t.instruction for t in generate_tasks(20, level=2, seed=4)]
    assert [t.id for t in load_task_set("arith-code:n=3,level=4,seed=9")] == \
        ["arith-code/L4-s9-00000", "arith-code/L4-s9-00001", "arith-code/L4-s9-00002"]
    with pytest.raises(ValueError):
        generate_tasks(1, level=7)


def test_prompts_are_short():
    for level in LEVELS:
        for task in generate_tasks(50, level=level, seed=0):
            assert len(task.instruction) < 110 and task.instruction.endswith("Answer by writing Python.")


@pytest.mark.timeout(120)
def test_reference_programs_print_the_answer_in_the_sandbox(tmp_path):
    sandbox = Sandbox(tmp_path / "ws", SandboxConfig(wall_timeout_s=30))
    for level in LEVELS:
        for task in generate_tasks(3, level=level, seed=21):
            result = sandbox.run_code("python", task.metadata["reference_code"])
            messages = solution_messages(task)
            assert format_observation(result) == messages[3]["content"] == task.grading.expected
            assert grade(task, None, messages[4]["content"].removeprefix("ANSWER: ")).reward == 1.0


def test_supervised_examples_without_a_tokenizer_are_chat_transcripts():
    (example,) = supervised_examples(1, level=1, seed=0)
    roles = [m["role"] for m in example["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"] and "input_ids" not in example


def test_exported_tasks_load_back(tmp_path):
    task = generate_tasks(1, level=3, seed=2)[0]
    loaded = load_task(task.save(tmp_path / "t"))
    assert (loaded.id, loaded.instruction, loaded.grading.expected, loaded.limits) == \
        (task.id, task.instruction, task.grading.expected, task.limits)
