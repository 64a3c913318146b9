"""System prompts, the reply conventions they teach, and the text of observations.

The agent's action interface is code: each reply holds one fenced code block, tagged ``python`` or
``bash``, which runs in the task's sandbox; its output comes back as the next user turn. A reply with no
code block and a line ``ANSWER: <answer>`` ends the episode with that answer (for repository tasks the
answer text is not graded; the workspace is).

``arith`` is deliberately short: the RL demo trains a few-million-parameter model on it.
"""

from __future__ import annotations

from lagoon.agent.sandbox import RunResult

SYSTEM_PROMPTS = {
    "code": (
        "You are a coding agent working in a Linux sandbox without network access. The working directory is "
        "{workdir}; it holds the task's files, and files you write there persist between steps.\n\n"
        "Act by writing code. Each reply must contain exactly one code block, either\n"
        "```python\n# a Python 3 program\n```\nor\n```bash\n# a shell script\n```\n"
        "It runs as a fresh process and you get its output (stdout, then stderr and the exit status if any) in "
        "the next message. Long outputs are cut in the middle; the full text is saved in the file the "
        "message names. Use the code to explore, edit files, and run tests.\n\n"
        "When the task is done, reply with no code block and a final line\nANSWER: <your answer>\n"
        "(for a task that changes files, ANSWER: done)."
    ),
    "arith": ("Solve the task by running code. Reply with one ```python block; you will see its output. "
              "Then reply ANSWER: <answer>."),
}

NO_OUTPUT = "(no output)"


def system_prompt(name: str, workdir: str) -> str:
    if name not in SYSTEM_PROMPTS:
        raise KeyError(f"unknown prompt {name!r}; known: {', '.join(SYSTEM_PROMPTS)}")
    return SYSTEM_PROMPTS[name].format(workdir=workdir)


def format_observation(result: RunResult) -> str:
    """The next user turn after an action: its stdout, then stderr, then how it ended if not cleanly."""
    parts = []
    if result.stdout:
        parts.append(result.stdout.rstrip("\n"))
    if result.stderr:
        parts.append(result.stderr.rstrip("\n"))
    end = result.describe_end()
    if end:
        parts.append(f"[{end}]")
    return "\n".join(parts) if parts else NO_OUTPUT


def format_error_message(problem: str) -> str:
    """What the agent is told when its reply is neither one code block nor a final answer."""
    return (f"Format error: {problem}. Reply with exactly one ```python or ```bash code block, "
            "or, when done, no code block and a final line ANSWER: <answer>.")
