"""The harness against ``lagoon serve`` (a real server process with a real checkpoint and tokenizer):
token-in/token-out transcripts are exact across turns, a prefix break starts a new sample, chat mode works,
and the ``lagoon agent`` commands run end to end."""

from __future__ import annotations

import dataclasses
import json

import pytest

from lagoon.agent.arith import generate_tasks, solution_messages
from lagoon.agent.clients import ChatClient, CompletionsClient
from lagoon.agent.config import AgentConfig, SamplingConfig
from lagoon.agent.evaluate import trajectory_name
from lagoon.agent.harness import run_episode
from lagoon.agent.local_server import LocalServer
from lagoon.agent.tito import encode, encode_conversation, render
from lagoon.agent.trajectory import Episode
from tests.agent.policy_model import completion_logprobs, train_checkpoint
from tests.conftest import assert_one_line_error, run_lagoon

TEMPERATURE = 0.5
TASK_A = generate_tasks(n=1, level=2, seed=11)[0]  # the model answers in the canonical format
TASK_B = generate_tasks(n=1, level=2, seed=12)[0]  # the model's first reply lacks the newline the template puts first


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer_dir, tokenizer):
    a = encode_conversation(solution_messages(TASK_A), tokenizer)
    b_messages = solution_messages(TASK_B)
    prompt_b = encode(tokenizer, render(b_messages[:2], True, False))
    code = TASK_B.metadata["reference_code"]
    odd_reply = encode(tokenizer, f"```python\n{code}```\n</assistant>")
    b_first = (prompt_b + odd_reply, [0] * len(prompt_b) + [1] * len(odd_reply))
    # After the break the context is the fresh render: teach the answer turn there (first reply masked out).
    ids, mask = encode_conversation(b_messages, tokenizer)
    first_end = next(i for i in range(len(mask)) if mask[i] == 1 and (i + 1 == len(mask) or mask[i + 1] == 0))
    b_second = (ids, [0] * (first_end + 1) + mask[first_end + 1:])
    return train_checkpoint(tmp_path_factory.mktemp("policy") / "ckpt", tokenizer_dir, [a, b_first, b_second],
                            vocab_size=tokenizer.vocab_size)


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    with LocalServer(checkpoint, tmp_path_factory.mktemp("serve") / "serve.log") as running:
        yield running


def _config() -> AgentConfig:
    return AgentConfig(sampling=SamplingConfig(temperature=TEMPERATURE, max_tokens_per_turn=64, seed=1234))


@pytest.mark.timeout(240)  # includes training the test policy and starting the server
def test_token_in_token_out_transcripts_are_exact(server, checkpoint, tokenizer, tmp_path):
    episode = run_episode(TASK_A, CompletionsClient(server.base_url), _config(), tokenizer=tokenizer,
                          trajectory_path=tmp_path / "a.jsonl")
    assert episode.exit_reason == "submitted" and episode.reward == 1.0, episode.end
    assert all(turn["prefix"]["ok"] for turn in episode.turns if "prefix" in turn)
    (sample,) = Episode.load(tmp_path / "a.jsonl").samples()
    assert len(sample.turn_indices) == 2 and sample.policy_versions == [0]
    # The stored sequence is exactly what a fresh render of the finished conversation tokenizes to.
    conversation = episode.header["messages"] + [
        {"role": "assistant", "content": episode.turns[0]["completion_text"]},
        {"role": "user", "content": episode.turns[0]["observation"]},
        {"role": "assistant", "content": episode.turns[1]["completion_text"]}]
    assert sample.input_ids == encode(tokenizer, render(conversation, False, False))[:-1]
    # The ids stored are the ids the model produced in that very context: the checkpoint, run offline over
    # the stored sequence, gives the sampler's reported log-probabilities at every generated position.
    offline = completion_logprobs(checkpoint, sample.input_ids, sample.loss_mask, TEMPERATURE)
    stored = [lp for lp, m in zip(sample.logprobs, sample.loss_mask) if m]
    assert len(offline) == len(stored) == sum(sample.loss_mask)
    assert max(abs(x - y) for x, y in zip(offline, stored)) < 2e-3
    # Turn 2's prompt is turn 1's prompt + its completion + the observation's framing, nothing re-tokenized.
    first, second = episode.turns
    assert second["prompt_len"] == first["prompt_len"] + len(first["completion_ids"]) + len(second["prompt_ids"])
    assert tokenizer.decode(second["prompt_ids"], skip_special_tokens=False) == \
        f"\n<user>\n{TASK_A.grading.expected}\n</user>\n<assistant>\n</think>"


@pytest.mark.timeout(240)
def test_a_turn_asks_only_for_the_context_that_is_left(server, checkpoint, tokenizer, tmp_path):
    """Against a server whose context is the prompt plus 8 tokens, the first turn asks for at most 8 (not the
    turn's 64, which the server would refuse with a 400), and the episode ends as "context exhausted"."""
    prompt_len = run_episode(TASK_A, CompletionsClient(server.base_url), _config(), tokenizer=tokenizer,
                             do_grade=False).turns[0]["prompt_len"]
    with LocalServer(checkpoint, tmp_path / "short.log", ["--max-model-len", str(prompt_len + 8)]) as short:
        episode = run_episode(TASK_A, CompletionsClient(short.base_url), _config(), tokenizer=tokenizer,
                              do_grade=False)
    assert episode.exit_reason == "context_exhausted", episode.end
    assert "error" not in episode.end
    assert 0 < len(episode.turns[0]["completion_ids"]) <= 8


@pytest.mark.timeout(120)
def test_a_prefix_break_starts_a_new_sample(server, tokenizer, tmp_path):
    episode = run_episode(TASK_B, CompletionsClient(server.base_url), _config(), tokenizer=tokenizer,
                          trajectory_path=tmp_path / "b.jsonl")
    first = episode.turns[0]
    assert first["completion_text"].startswith("```python") and first["observation"] == TASK_B.grading.expected
    assert not first["prefix"]["ok"] and first["prefix"]["reason"] == "the template renders the conversation differently"
    assert episode.end["num_samples"] == 2
    samples = Episode.load(tmp_path / "b.jsonl").samples()
    assert [s.index for s in samples] == [0, 1]
    # Sample 1 starts from a fresh render of the conversation so far, not from re-tokenized old ids.
    second = episode.turns[1]
    messages = episode.header["messages"] + [{"role": "assistant", "content": first["completion_text"]},
                                             {"role": "user", "content": first["observation"]}]
    assert samples[1].input_ids[: second["prompt_len"]] == encode(tokenizer, render(messages, True, False))
    assert samples[0].input_ids[-len(first["completion_ids"]):] == first["completion_ids"]
    assert episode.exit_reason == "submitted" and episode.reward == 1.0


@pytest.mark.timeout(120)
def test_chat_mode_against_lagoon_serve(server):
    config = dataclasses.replace(_config(), sampling=dataclasses.replace(_config().sampling, temperature=0.0))
    episode = run_episode(TASK_A, ChatClient(server.base_url), config)
    assert episode.exit_reason == "submitted" and episode.reward == 1.0, episode.turns


def lagoon_main(capsys, *args: str) -> tuple[int, str]:
    """The `lagoon` CLI in this process (its real argument parsing and handlers), with its printed output."""
    from lagoon.cli import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().out


@pytest.mark.timeout(170)
def test_agent_commands_with_a_checkpoint(checkpoint, tmp_path, capsys):
    tasks_dir = tmp_path / "tasks"
    for task in (TASK_A, TASK_B):
        task.save(tasks_dir / task.id.split("/")[-1])
    out = tmp_path / "eval"
    # A checkpoint directory as --model: the command serves it with `lagoon serve` in a subprocess.
    code, printed = lagoon_main(capsys, "agent", "eval", "--tasks", str(tasks_dir), "--workers", "2", "--out", str(out),
                                "--model", str(checkpoint), "--set", "agent.sampling.temperature=0.5",
                                "--set", "agent.sampling.max_tokens_per_turn=64", "--seed", "7")
    assert code == 0
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["task_id"] for r in results) == sorted([TASK_A.id, TASK_B.id])
    assert all(r["reward"] == 1.0 for r in results) and "resolved 2/2" in printed
    assert json.loads((out / "summary.json").read_text())["resolved"] == 2
    # Resuming finds nothing left to do (the endpoint is never contacted).
    code, printed = lagoon_main(capsys, "agent", "eval", "--tasks", str(tasks_dir), "--out", str(out),
                                "--model", "http://127.0.0.1:9/v1", "--model-name", "unused")
    assert code == 0 and len((out / "results.jsonl").read_text().splitlines()) == 2 and "resolved 2/2" in printed
    # Replay re-executes the recorded actions in a fresh sandbox and reproduces every observation.
    trajectory = out / "trajectories" / trajectory_name(TASK_A.id)
    code, printed = lagoon_main(capsys, "agent", "replay", str(trajectory), "--execute",
                                "--task", str(tasks_dir / TASK_A.id.split("/")[-1]))
    assert code == 0 and "all observations match" in printed and "exit: submitted" in printed


@pytest.mark.timeout(120)
def test_agent_run_against_a_url_in_tito_mode(server, tokenizer_dir, tmp_path, capsys):
    code, printed = lagoon_main(capsys, "agent", "run", "--task", TASK_A.id, "--model", server.base_url, "--mode", "tito",
                                "--tokenizer", str(tokenizer_dir), "--set", "agent.sampling.temperature=0.5",
                                "--seed", "3", "--out", str(tmp_path / "run"))
    assert code == 0 and "exit: submitted · reward 1.0" in printed
    episode = Episode.load(tmp_path / "run" / "trajectory.jsonl")
    assert episode.header["mode"] == "tito" and episode.reward == 1.0 and len(episode.samples()) == 1


def test_cli_errors_are_one_line(tmp_path, capsys):
    result = run_lagoon("agent", "run", "--task", "pybugs/no-such-task", "--model", "http://127.0.0.1:9/v1")
    assert_one_line_error(result, "no task set")
    from lagoon.cli import main

    for args, fragment in [
        (["eval", "--tasks", "arith-code:n=2", "--out", str(tmp_path / "o"), "--model", str(tmp_path)],
         "neither a URL nor a checkpoint directory"),
        (["run", "--task", TASK_A.id, "--model", "http://127.0.0.1:9/v1", "--mode", "tito"], "needs --tokenizer"),
        (["eval", "--tasks", "arith-code:n=2,colour=3", "--out", str(tmp_path / "o"), "--model", "http://x/v1"],
         "unknown option 'colour'"),
    ]:
        capsys.readouterr()
        assert main(["agent", *args]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("lagoon: error: ") and fragment in error and "\n" not in error
