"""Generated tool use: questions answered by writing a short Python program, running it, reading its output.

This is code as the action interface, in the conventions of lagoon's agent harness
(`lagoon.agent.prompts`, `lagoon.agent.actions`): the assistant replies with exactly one fenced
``python`` block, the program's output comes back as the next turn (a ``user`` turn, the harness
default, or a ``tool`` turn), and the assistant ends with a line ``ANSWER: <answer>``. Each document is
one conversation of 1–3 such tasks, rendered with lagoon's chat template (`lagoon.data.chat`). Every
program really runs during generation (in-process, output captured) and the answer is what it printed.
The conventions are restated here rather than imported, so data stays upstream of the agent.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import random
from collections.abc import Callable, Iterator

from lagoon.data.chat import render_chat
from lagoon.data.config import SourceConfig
from lagoon.data.sources import Document

# A task: (question, program). The program prints its result.
Task = tuple[str, str]

WORDS = ["river", "lagoon", "matrix", "signal", "harbor", "kernel", "vector", "garden", "orbit", "pixel",
         "cipher", "meadow", "socket", "lantern", "quartz", "tensor", "violet", "window", "yonder", "zephyr"]


def _sum_of_powers(rng: random.Random) -> Task:
    n, p = rng.randint(10, 5000), rng.choice([1, 2, 3])
    return (f"What is the sum of k^{p} for k from 1 to {n}?",
            f"total = sum(k ** {p} for k in range(1, {n} + 1))\nprint(total)")


def _count_primes(rng: random.Random) -> Task:
    n = rng.randint(50, 20000)
    return (f"How many prime numbers are there below {n}?",
            f"n = {n}\nsieve = [True] * n\nsieve[0:2] = [False, False]\nfor i in range(2, int(n ** 0.5) + 1):\n"
            f"    if sieve[i]:\n        sieve[i * i::i] = [False] * len(sieve[i * i::i])\nprint(sum(sieve))")


def _fibonacci(rng: random.Random) -> Task:
    n = rng.randint(10, 150)
    return (f"What is the {n}th Fibonacci number (with F(1) = F(2) = 1)?",
            f"a, b = 1, 1\nfor _ in range({n} - 2):\n    a, b = b, a + b\nprint(b)")


def _days_between(rng: random.Random) -> Task:
    start = datetime.date(1990, 1, 1) + datetime.timedelta(days=rng.randint(0, 12000))
    end = start + datetime.timedelta(days=rng.randint(1, 9000))
    return (f"How many days are there between {start.isoformat()} and {end.isoformat()}?",
            f"from datetime import date\nprint((date.fromisoformat('{end.isoformat()}') - "
            f"date.fromisoformat('{start.isoformat()}')).days)")


def _weekday(rng: random.Random) -> Task:
    day = datetime.date(1900, 1, 1) + datetime.timedelta(days=rng.randint(0, 60000))
    return (f"What day of the week was {day.strftime('%B %d, %Y')}?",
            f"import datetime\nprint(datetime.date({day.year}, {day.month}, {day.day}).strftime('%A'))")


def _word_stats(rng: random.Random) -> Task:
    sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
    kind = rng.randrange(3)
    if kind == 0:
        return (f"Which word occurs most often in \"{sentence}\", and how many times?",
                f"from collections import Counter\nword, count = Counter('{sentence}'.split()).most_common(1)[0]\nprint(word, count)")
    if kind == 1:
        return (f"How many vowels are in \"{sentence}\"?",
                f"text = '{sentence}'\nprint(sum(ch in 'aeiou' for ch in text))")
    return (f"Reverse the order of the words in \"{sentence}\".",
            f"print(' '.join(reversed('{sentence}'.split())))")


def _statistics(rng: random.Random) -> Task:
    values = [rng.randint(-50, 200) for _ in range(rng.randint(5, 12))]
    return (f"What are the mean and the median of {values}?",
            f"import statistics\nvalues = {values}\nprint(round(statistics.mean(values), 3), statistics.median(values))")


def _gcd_lcm(rng: random.Random) -> Task:
    numbers = [rng.randint(2, 400) for _ in range(rng.randint(2, 4))]
    return (f"What are the greatest common divisor and the least common multiple of {', '.join(map(str, numbers))}?",
            f"import math\nnumbers = {numbers}\nprint(math.gcd(*numbers), math.lcm(*numbers))")


def _combinatorics(rng: random.Random) -> Task:
    n = rng.randint(5, 40)
    k = rng.randint(1, n - 1)
    return (f"In how many ways can {k} items be chosen from {n} if order does not matter?",
            f"import math\nprint(math.comb({n}, {k}))")


def _base_conversion(rng: random.Random) -> Task:
    n = rng.randint(2, 10 ** 6)
    return (f"Write {n} in binary and in hexadecimal.", f"n = {n}\nprint(bin(n)[2:], hex(n)[2:])")


def _compound_interest(rng: random.Random) -> Task:
    principal, rate, years = rng.randint(100, 20000), rng.choice([1.5, 2, 3.5, 4, 5, 7]), rng.randint(1, 30)
    return (f"If {principal} dollars earn {rate}% interest compounded yearly, how much is there after {years} years?",
            f"amount = {principal} * (1 + {rate} / 100) ** {years}\nprint(f'{{amount:.2f}}')")


def _collatz(rng: random.Random) -> Task:
    n = rng.randint(2, 100000)
    return (f"How many steps does the Collatz sequence starting at {n} take to reach 1?",
            f"n, steps = {n}, 0\nwhile n != 1:\n    n = n // 2 if n % 2 == 0 else 3 * n + 1\n    steps += 1\nprint(steps)")


def _sort_words(rng: random.Random) -> Task:
    words = rng.sample(WORDS, rng.randint(4, 9))
    return (f"Sort these words by length, then alphabetically: {', '.join(words)}.",
            f"words = {words}\nprint(sorted(words, key=lambda w: (len(w), w)))")


def _digit_sum(rng: random.Random) -> Task:
    base, exponent = rng.randint(2, 9), rng.randint(10, 200)
    return (f"What is the sum of the digits of {base}^{exponent}?",
            f"print(sum(int(d) for d in str({base} ** {exponent})))")


TASKS: list[Callable[[random.Random], Task]] = [
    _sum_of_powers, _count_primes, _fibonacci, _days_between, _weekday, _word_stats, _statistics, _gcd_lcm,
    _combinatorics, _base_conversion, _compound_interest, _collatz, _sort_words, _digit_sum,
]

# The harness's short "arith" system prompt (lagoon.agent.prompts) and close variants of it.
SYSTEM_PROMPTS = [
    "Solve the task by running code. Reply with one ```python block; you will see its output. "
    "Then reply ANSWER: <answer>.",
    "Act by writing code: reply with exactly one ```python block and you will get its output. "
    "When you know the answer, reply with no code block and a final line ANSWER: <answer>.",
]
OPENERS = ["I'll compute this with a short program.", "Let me write a small script for that.",
           "This is easiest to check in Python.", "", ""]
CLOSERS = ["The program printed {out}.\nANSWER: {out}", "ANSWER: {out}", "That settles it.\nANSWER: {out}"]


def run_program(program: str) -> str:
    """Run a generated program in-process and return what it printed (stripped)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        exec(compile(program, "<tool_use>", "exec"), {"__name__": "__tool_use__"})  # our own generated code
    return buffer.getvalue().strip()


def conversation(rng: random.Random) -> list[dict[str, str]]:
    observation_role = "user" if rng.random() < 0.8 else "tool"
    messages: list[dict[str, str]] = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS)}]
    for task in rng.sample(TASKS, rng.randint(1, 3)):
        question, program = task(rng)
        output = run_program(program)
        opener = rng.choice(OPENERS)
        messages += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": (opener + "\n" if opener else "") + f"```python\n{program}\n```"},
            {"role": observation_role, "content": output},
            {"role": "assistant", "content": rng.choice(CLOSERS).format(out=output)},
        ]
    return messages


def generate_tool_use(source: SourceConfig, count: int) -> Iterator[Document]:
    """`count` conversations, deterministic for the source's seed."""
    for index in range(count):
        rng = random.Random(f"tool_use:{source.seed}:{index}")
        messages = conversation(rng)
        yield Document(id=f"tool_use:{source.seed}:{index}", text=render_chat(messages), source=source.label,
                       domain=source.domain, metadata={"tasks": (len(messages) - 1) // 4})
