"""The harness loop against an OpenAI-compatible chat endpoint (a scripted server on a real socket), with
real sandboxes and real grading: budgets, exit reasons, the submit convention, per-step trajectories."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import time

import pytest

from lagoon.agent.actions import parse_reply
from lagoon.agent.arith import generate_tasks
from lagoon.agent.clients import ChatClient
from lagoon.agent.config import AgentConfig, BudgetConfig
from lagoon.agent.harness import run_episode
from lagoon.agent.tasks import load_task_set
from lagoon.agent.trajectory import Episode
from tests.agent.scripted_server import ScriptedChatServer


def test_parse_reply():
    assert parse_reply("Let me compute.\n```python\nprint(2+2)\n```\n").code == "print(2+2)\n"
    assert parse_reply("```bash\nls -la\n```").language == "bash"
    assert parse_reply("The result is 4.\nANSWER: 4").answer == "4"
    assert parse_reply("<think>maybe ```python\nx\n```</think>\nANSWER: 7").kind == "submit"
    assert "2 code blocks" in parse_reply("```python\na\n```\n```python\nb\n```").error
    assert "tag it" in parse_reply("```\nprint(1)\n```").error
    assert "no code block" in parse_reply("I think it is four.").error
    assert "not closed" in parse_reply("```python\nprint(1)").error


@pytest.mark.timeout(60)
def test_arith_episode_is_solved_and_graded(tmp_path):
    task = generate_tasks(n=1, level=2, seed=7)[0]
    replies = [f"```python\n{task.metadata['reference_code']}```",
               lambda messages: f"ANSWER: {messages[-1]['content']}"]
    with ScriptedChatServer(replies) as server:
        episode = run_episode(task, ChatClient(server.base_url), trajectory_path=tmp_path / "t.jsonl")
    assert episode.exit_reason == "submitted" and episode.reward == 1.0
    assert episode.end["grade"]["details"] == {"expected": task.grading.expected, "submitted": task.grading.expected}
    first = episode.turns[0]
    assert first["action"]["kind"] == "code" and first["observation"] == task.grading.expected
    assert first["execution"]["exit_code"] == 0
    # The observation came back to the model as the next user turn.
    assert server.requests[1]["messages"][-1] == {"role": "user", "content": task.grading.expected}
    assert server.requests[0]["messages"][0]["role"] == "system"
    assert Episode.load(tmp_path / "t.jsonl").to_records() == episode.to_records()


@pytest.mark.timeout(60)
def test_wrong_answer_scores_zero_and_nothing_is_left_behind(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    task = generate_tasks(n=1, level=1, seed=1)[0]
    with ScriptedChatServer(["```python\nprint(1)\n```", "ANSWER: 12345678"]) as server:
        episode = run_episode(task, ChatClient(server.base_url, model="scripted"))
    assert episode.exit_reason == "submitted" and episode.reward == 0.0 and len(episode.turns) == 2
    assert list(tmp_path.iterdir()) == []  # workspace, trajectory and grading copies all removed


@pytest.mark.timeout(60)
def test_budgets_each_have_their_exit_reason(tmp_path):
    task = generate_tasks(n=1, level=1, seed=2)[0]
    config = AgentConfig(budgets=BudgetConfig(max_steps=10, max_format_errors=2))
    task = dataclasses.replace(task, limits={})  # the arith task's own limits would cap steps at 4
    with ScriptedChatServer(["I am not sure.", "Maybe 3?", "never reached"]) as server:
        episode = run_episode(task, ChatClient(server.base_url), config)
    assert episode.exit_reason == "max_format_errors" and len(episode.turns) == 2
    assert "Format error" in episode.turns[0]["observation"]

    config = AgentConfig(budgets=BudgetConfig(max_steps=3))
    with ScriptedChatServer(["```python\nprint('step')\n```"] * 5) as server:
        episode = run_episode(task, ChatClient(server.base_url), config)
    assert episode.exit_reason == "max_steps" and len(episode.turns) == 3

    config = AgentConfig(budgets=BudgetConfig(max_tokens=30))  # the scripted server counts len(text) // 4
    with ScriptedChatServer(["```python\nprint('a fairly long step of output')\n```"] * 5) as server:
        episode = run_episode(task, ChatClient(server.base_url), config)
    assert episode.exit_reason == "max_tokens" and episode.end["completion_tokens"] >= 30

    config = AgentConfig(budgets=BudgetConfig(max_wall_s=2.0))  # an action may not outlive the episode
    with ScriptedChatServer(["```bash\nsleep 30\n```", "never reached"]) as server:
        episode = run_episode(task, ChatClient(server.base_url), config)
    assert episode.exit_reason == "max_wall_s" and episode.turns[0]["execution"]["timed_out"]

    with ScriptedChatServer([]) as server:  # the endpoint fails
        episode = run_episode(task, ChatClient(server.base_url, max_retries=0), config)
    assert episode.exit_reason == "model_error" and "500" in episode.end["error"]


def _write_files_code(files: dict[str, str]) -> str:
    return ("```python\nfiles = " + repr(files) + "\nfor path, text in files.items():\n"
            "    open(path, 'w').write(text)\nprint('patched', len(files))\n```")


@pytest.mark.timeout(90)
def test_repository_task_fixed_by_the_agent_is_resolved(tmp_path):
    task = next(t for t in load_task_set("pybugs") if t.id == "pybugs/paginate-last-page")
    fix = {str(p.relative_to(task.reference_dir)): p.read_text() for p in task.reference_dir.rglob("*.py")}
    replies = ["```bash\nls\npython -m pytest -q 2>&1 | tail -1\n```", _write_files_code(fix), "Fixed.\nANSWER: done"]
    with ScriptedChatServer(replies) as server:
        episode = run_episode(task, ChatClient(server.base_url), keep_workspace=True, workspace=tmp_path / "ws")
    assert episode.exit_reason == "submitted" and episode.reward == 1.0, episode.end
    assert "pager.py" in episode.turns[0]["observation"] and "passed" in episode.turns[0]["observation"]
    assert (tmp_path / "ws" / ".lagoon" / "actions" / "0001.py").is_file()

    cheat = {"tests/test_pager.py": "def test_nothing():\n    pass\n"}
    with ScriptedChatServer([_write_files_code(cheat), "ANSWER: done"]) as server:
        episode = run_episode(task, ChatClient(server.base_url))
    assert episode.exit_reason == "submitted" and episode.reward == 0.0
    assert set(episode.end["grade"]["details"]["fail_to_pass"].values()) == {"failed"}


@pytest.mark.timeout(90)
def test_a_crash_loses_no_finished_step(tmp_path):
    trajectory = tmp_path / "t.jsonl"
    with ScriptedChatServer(["```python\nprint(1)\n```", "```python\nprint(2)\n```", "ANSWER: 3"],
                            delay_after=2, delay_s=60) as server:
        script = textwrap.dedent(f"""
            from lagoon.agent.arith import generate_tasks
            from lagoon.agent.clients import ChatClient
            from lagoon.agent.harness import run_episode
            task = generate_tasks(n=1, level=1, seed=3)[0]
            run_episode(task, ChatClient({server.base_url!r}), trajectory_path={str(trajectory)!r})
        """)
        process = subprocess.Popen([sys.executable, "-c", script])
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(server.requests) < 3:
                time.sleep(0.05)
            assert len(server.requests) == 3  # the third request hangs: the harness is mid-episode
        finally:
            process.kill()
            process.wait()
    episode = Episode.load(trajectory)
    assert episode.end is None and [t["observation"] for t in episode.turns] == ["1", "2"]
    assert json.loads(trajectory.read_text().splitlines()[0])["schema"] == "lagoon.trajectory/1"


@pytest.mark.timeout(90)
def test_agent_run_command_against_a_chat_endpoint(tmp_path, capsys, monkeypatch):
    from lagoon.cli import main

    task = load_task_set("pybugs")[0]
    fix = {str(p.relative_to(task.reference_dir)): p.read_text() for p in task.reference_dir.rglob("*.py")}
    monkeypatch.setenv("LAGOON_TEST_KEY", "secret-token")
    with ScriptedChatServer([_write_files_code(fix), "ANSWER: done"]) as server:
        code = main(["agent", "run", "--task", task.id, "--model", server.base_url, "--api-key-env", "LAGOON_TEST_KEY",
                     "--out", str(tmp_path / "run")])
    printed = capsys.readouterr().out
    assert code == 0 and "exit: submitted · reward 1.0" in printed and "fail_to_pass" in printed
    assert server.authorizations == ["Bearer secret-token"] * 2
    assert (tmp_path / "run" / "workspace" / "tests").is_dir()  # --out keeps the workspace
    episode = Episode.load(tmp_path / "run" / "trajectory.jsonl")
    assert episode.header["mode"] == "chat" and episode.header["model"]["model"] == "scripted"

    code = main(["agent", "tasks", "pybugs", "--export", str(tmp_path / "exported")])
    assert code == 0 and len(list((tmp_path / "exported").glob("*/task.toml"))) == len(load_task_set("pybugs"))
    assert load_task_set(str(tmp_path / "exported"))[0].grading == task.grading
