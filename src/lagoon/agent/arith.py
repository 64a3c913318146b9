"""arith-code: generated arithmetic questions best answered by writing and running a short program.

The RL demo's task. A question ("What is 37*12+5? Answer by writing Python.") is answered in two turns:

    assistant: ```python\\nprint(37*12+5)\\n```          (runs in the sandbox)
    user:      449                                      (the observation)
    assistant: ANSWER: 449                              (graded by exact match)

Levels (seeded, reproducible):

    1  a op b                    two-digit operands, op in + - *
    2  a op b op c               precedence matters (37*12+5, 8+41*7)
    3  (a+b)*c-d, a*b%c, a//b+c  three-digit operands, integer division and remainder
    4  aggregates                sums of squares, counts of multiples, digit sums of powers: a loop is the
                                 natural way to compute them

`supervised_examples` produces the perfect transcripts in the exact chat format (and, given a tokenizer,
the exact token ids and loss mask the token-in/token-out harness would produce) for warm-up training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from lagoon.agent.tasks import Grading, Task

LEVELS = (1, 2, 3, 4)
LIMITS = {"max_steps": 4, "max_format_errors": 2, "max_wall_s": 120.0, "wall_timeout_s": 10.0, "cpu_seconds": 10}
"""Per-task limits: a solved episode takes two turns."""
SUFFIX = " Answer by writing Python."


@dataclass(frozen=True)
class ArithProblem:
    question: str
    """The instruction the agent sees."""
    code: str
    """A program that prints the answer (the reference solution)."""
    answer: str


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(2 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)


def make_problem(rng: random.Random, level: int) -> ArithProblem:
    """One problem of `level`, drawn from `rng`."""
    if level == 1:
        a, b = _operand(rng, 2), _operand(rng, 2)
        expression = f"{a}{rng.choice('+-*')}{b}"
    elif level == 2:
        a, b, c = _operand(rng, 2), _operand(rng, 2), _operand(rng, 1)
        first, second = rng.choice("+-*"), rng.choice("+-*")
        expression = f"{a}{first}{b}{second}{c}"
    elif level == 3:
        a, b, c, d = (_operand(rng, 3) for _ in range(4))
        expression = rng.choice([f"({a}+{b})*{c}-{d}", f"{a}*{b}%{c}", f"{a * b}//{c}+{d}", f"{a}*{b}-{c}*{d}"])
    elif level == 4:
        kind = rng.randrange(3)
        if kind == 0:
            n = rng.randint(10, 500)
            question = f"What is the sum of the squares of the integers from 1 to {n}?"
            code = f"print(sum(i*i for i in range(1, {n + 1})))"
        elif kind == 1:
            n, a, b = rng.randint(100, 5000), rng.randint(2, 9), rng.randint(2, 9)
            question = f"How many integers from 1 to {n} are divisible by {a} or {b}?"
            code = f"print(sum(1 for i in range(1, {n + 1}) if i % {a} == 0 or i % {b} == 0))"
        else:
            a, k = rng.randint(2, 99), rng.randint(10, 60)
            question = f"What is the sum of the digits of {a}**{k}?"
            code = f"print(sum(int(d) for d in str({a}**{k})))"
        return ArithProblem(question + SUFFIX, code + "\n", _evaluate(code))
    else:
        raise ValueError(f"arith-code levels are {LEVELS}, not {level}")
    code = f"print({expression})"
    return ArithProblem(f"What is {expression}?{SUFFIX}", code + "\n", _evaluate(code))


def _evaluate(code: str) -> str:
    """Run the (generated, trusted) one-line program in-process and return what it prints."""
    assert code.startswith("print(") and code.rstrip().endswith(")")
    return str(eval(code.strip()[len("print("):-1], {"__builtins__": {"sum": sum, "range": range, "int": int, "str": str}}))


def generate_tasks(n: int = 100, level: int = 1, seed: int = 0) -> list[Task]:
    """`n` arith-code tasks of `level`, the same for the same seed."""
    if n <= 0:
        raise ValueError("n must be positive")
    rng = random.Random(f"arith-code/{level}/{seed}")
    tasks = []
    for index in range(n):
        problem = make_problem(rng, level)
        tasks.append(Task(id=f"arith-code/L{level}-s{seed}-{index:05d}", instruction=problem.question, kind="answer",
                          prompt="arith", limits=dict(LIMITS), grading=Grading(expected=problem.answer, timeout_s=10.0),
                          metadata={"level": level, "seed": seed, "index": index, "reference_code": problem.code}))
    return tasks


def solution_messages(task: Task, workdir: str = "/workspace") -> list[dict[str, str]]:
    """The perfect conversation for an arith-code task, exactly as the harness builds it."""
    from lagoon.agent.prompts import system_prompt

    code = task.metadata["reference_code"]
    answer = task.grading.expected
    return [
        {"role": "system", "content": system_prompt(task.prompt, workdir)},
        {"role": "user", "content": task.instruction},
        {"role": "assistant", "content": f"```python\n{code}```"},
        {"role": "user", "content": answer},  # what format_observation makes of stdout "<answer>\n"
        {"role": "assistant", "content": f"ANSWER: {answer}"},
    ]


def supervised_examples(n: int, level: int = 1, seed: int = 0, tokenizer: Any = None,
                        enable_thinking: bool = False) -> list[dict[str, Any]]:
    """Full correct transcripts for warm-up training.

    Each example has ``task_id``, ``messages`` (chat format) and ``answer``; given a tokenizer (anything with
    ``encode(text, add_special_tokens=False)``), also ``input_ids`` and ``loss_mask`` (1 on the tokens the
    model must produce, the end-of-turn token included), built by the same code that builds token-in/token-out
    contexts, so warm-up data and RL rollouts agree token for token.
    """
    from lagoon.agent.tito import encode_conversation

    examples = []
    for task in generate_tasks(n=n, level=level, seed=seed):
        messages = solution_messages(task)
        example: dict[str, Any] = {"task_id": task.id, "messages": messages, "answer": task.grading.expected}
        if tokenizer is not None:
            example["input_ids"], example["loss_mask"] = encode_conversation(messages, tokenizer, enable_thinking)
        examples.append(example)
    return examples
