"""Generated math: worksheets of problems with worked answers, in several formats.

Each document is a worksheet of 3–7 problems drawn from eleven families (multi-digit arithmetic with
column steps, long division, order of operations, fractions, percentages, linear equations, systems of
two equations, quadratics by factoring, gcd by Euclid's algorithm, prime factorisation, and word
problems on rates, prices and ages), written in one of four formats (textbook, Q&A, LaTeX, step list).
Several problems per document keep templated worksheets from being near duplicates of one another.
Every answer is computed, never typed in, so the worked solutions are correct.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from fractions import Fraction

from lagoon.data.config import SourceConfig
from lagoon.data.sources import Document

# A problem: (statement, worked steps, final answer). Statements may contain $…$ for the LaTeX format.
Problem = tuple[str, list[str], str]

NAMES = ["Ada", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lena",
         "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq", "Uma", "Vik", "Wen", "Yara"]
ITEMS = ["notebooks", "apples", "tickets", "pencils", "bus passes", "loaves of bread", "plants", "cables",
         "stamps", "jars of honey", "books", "batteries"]


def addition(rng: random.Random) -> Problem:
    a, b = rng.randint(100, 99999), rng.randint(100, 99999)
    op = rng.choice("+-")
    if op == "-":
        a, b = max(a, b), min(a, b)
    result = a + b if op == "+" else a - b
    steps, carry = [], 0
    digits_a, digits_b = str(a)[::-1], str(b)[::-1]
    for place in range(max(len(digits_a), len(digits_b))):
        x = int(digits_a[place]) if place < len(digits_a) else 0
        y = int(digits_b[place]) if place < len(digits_b) else 0
        if op == "+":
            total = x + y + carry
            steps.append(f"Place {10 ** place}: {x} + {y}" + (f" + {carry}" if carry else "") +
                         f" = {total}, write {total % 10}" + (", carry 1" if total >= 10 else ""))
            carry = total // 10
        else:
            x -= carry
            carry = int(x < y)
            steps.append(f"Place {10 ** place}: " + (f"borrow, {x + 10} - {y}" if carry else f"{x} - {y}") +
                         f" = {x + 10 * carry - y}")
    if op == "+" and carry:
        steps.append("Write the final carry 1.")
    return f"Compute {a} {op} {b}.", steps, str(result)


def multiplication(rng: random.Random) -> Problem:
    a, b = rng.randint(12, 9999), rng.randint(12, 999)
    steps, total = [], 0
    for place, digit in enumerate(str(b)[::-1]):
        partial = a * int(digit) * 10 ** place
        total += partial
        steps.append(f"{a} × {digit}{'0' * place} = {partial}")
    steps.append("Add the partial products: " + " + ".join(
        str(a * int(d) * 10 ** p) for p, d in enumerate(str(b)[::-1])) + f" = {total}")
    return f"Multiply $ {a} \\times {b} $.", steps, str(a * b)


def long_division(rng: random.Random) -> Problem:
    divisor = rng.randint(3, 97)
    dividend = rng.randint(divisor * 10, divisor * 999)
    quotient, remainder = divmod(dividend, divisor)
    steps = [f"{divisor} × {quotient} = {divisor * quotient}", f"{dividend} - {divisor * quotient} = {remainder}"]
    return (f"Divide {dividend} by {divisor}; give the quotient and the remainder.", steps,
            f"{quotient} remainder {remainder}")


def order_of_operations(rng: random.Random) -> Problem:
    a, b, c, d = (rng.randint(2, 20) for _ in range(4))
    form = rng.randrange(3)
    if form == 0:
        expression, steps = f"{a} + {b} × {c} - {d}", [f"{b} × {c} = {b * c}", f"{a} + {b * c} = {a + b * c}",
                                                          f"{a + b * c} - {d} = {a + b * c - d}"]
        value = a + b * c - d
    elif form == 1:
        expression, steps = f"({a} + {b}) × {c} - {d}", [f"{a} + {b} = {a + b}", f"{a + b} × {c} = {(a + b) * c}",
                                                           f"{(a + b) * c} - {d} = {(a + b) * c - d}"]
        value = (a + b) * c - d
    else:
        expression = f"{a} × {b} - {c}^2 + {d}"
        steps = [f"{c}^2 = {c * c}", f"{a} × {b} = {a * b}", f"{a * b} - {c * c} + {d} = {a * b - c * c + d}"]
        value = a * b - c * c + d
    return f"Evaluate $ {expression} $.", steps, str(value)


def fractions(rng: random.Random) -> Problem:
    x = Fraction(rng.randint(1, 11), rng.randint(2, 12))
    y = Fraction(rng.randint(1, 11), rng.randint(2, 12))
    op = rng.choice(["+", "-", "×"])
    result = x + y if op == "+" else x - y if op == "-" else x * y
    if op == "×":
        steps = [f"Multiply numerators and denominators: {x.numerator}·{y.numerator} / {x.denominator}·{y.denominator}"]
    else:
        common = x.denominator * y.denominator // math.gcd(x.denominator, y.denominator)
        steps = [f"Common denominator: {common}",
                 f"{x} = {x.numerator * common // x.denominator}/{common}, {y} = {y.numerator * common // y.denominator}/{common}"]
    steps.append(f"Simplify to {result}")
    return f"Compute $ \\frac{{{x.numerator}}}{{{x.denominator}}} {op} \\frac{{{y.numerator}}}{{{y.denominator}}} $.", steps, str(result)


def percentages(rng: random.Random) -> Problem:
    if rng.random() < 0.5:
        percent, whole = rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 45, 60, 75]), rng.randint(2, 400) * 4
        value = Fraction(percent * whole, 100)
        return (f"What is {percent}% of {whole}?", [f"{percent}% = {percent}/100", f"{percent}/100 × {whole} = {value}"],
                str(value if value.denominator > 1 else value.numerator))
    old = rng.randint(20, 500)
    new = old + rng.randint(-old // 2, old)
    change = Fraction(new - old, old) * 100
    return (f"A price changes from {old} to {new}. What is the percent change?",
            [f"Change = {new} - {old} = {new - old}", f"{new - old} / {old} × 100 = {float(change):.2f}%"],
            f"{float(change):.2f}%")


def linear_equation(rng: random.Random) -> Problem:
    a, x = rng.choice([i for i in range(-9, 13) if i not in (0, 1)]), rng.randint(-20, 20)
    b = rng.randint(-50, 50)
    c = a * x + b
    steps = [f"Subtract {b} from both sides: {a}x = {c} - ({b}) = {c - b}", f"Divide by {a}: x = {(c - b) // a}"]
    return f"Solve for x: $ {a}x + {b} = {c} $.".replace("+ -", "- "), steps, f"x = {x}"


def linear_system(rng: random.Random) -> Problem:
    x, y = rng.randint(-9, 9), rng.randint(-9, 9)
    a1, b1, a2, b2 = (rng.choice([i for i in range(-6, 7) if i]) for _ in range(4))
    if a1 * b2 - a2 * b1 == 0:
        b2 += 1 if b2 != -1 else 2
    c1, c2 = a1 * x + b1 * y, a2 * x + b2 * y
    det = a1 * b2 - a2 * b1
    steps = [f"Multiply the first equation by {b2} and the second by {b1}, then subtract to eliminate y",
             f"({a1}·{b2} - {a2}·{b1}) x = {c1}·{b2} - {c2}·{b1}, so {det} x = {c1 * b2 - c2 * b1} and x = {x}",
             f"Substitute into the first equation: {b1} y = {c1} - ({a1}·{x}) = {c1 - a1 * x}, so y = {y}"]
    return (f"Solve the system $ {a1}x + {b1}y = {c1} $ and $ {a2}x + {b2}y = {c2} $.".replace("+ -", "- "),
            steps, f"x = {x}, y = {y}")


def quadratic(rng: random.Random) -> Problem:
    r, s = rng.randint(-12, 12), rng.randint(-12, 12)
    b, c = -(r + s), r * s
    steps = [f"Find two numbers with product {c} and sum {-b}: {r} and {s}",
             f"Factor: (x - {r})(x - {s}) = 0".replace("- -", "+ "), f"So x = {r} or x = {s}"]
    roots = sorted({r, s})
    return (f"Solve $ x^2 + {b}x + {c} = 0 $.".replace("+ -", "- "), steps,
            " or ".join(f"x = {v}" for v in roots))


def euclid(rng: random.Random) -> Problem:
    g = rng.randint(2, 40)
    a, b = g * rng.randint(3, 60), g * rng.randint(3, 60)
    steps, x, y = [], max(a, b), min(a, b)
    while y:
        steps.append(f"{x} = {x // y} × {y} + {x % y}")
        x, y = y, x % y
    return f"Find gcd({a}, {b}) with Euclid's algorithm.", steps, str(math.gcd(a, b))


def factorisation(rng: random.Random) -> Problem:
    n = math.prod(rng.choice([2, 2, 2, 3, 3, 5, 7, 11, 13, 17]) for _ in range(rng.randint(2, 6)))
    steps, remaining, factors = [], n, []
    for p in (2, 3, 5, 7, 11, 13, 17):
        while remaining % p == 0:
            steps.append(f"{remaining} ÷ {p} = {remaining // p}")
            remaining //= p
            factors.append(p)
    powers = " × ".join(f"{p}^{factors.count(p)}" if factors.count(p) > 1 else str(p) for p in sorted(set(factors)))
    return f"Write {n} as a product of primes.", steps, powers


def word_problem(rng: random.Random) -> Problem:
    name, other = rng.sample(NAMES, 2)
    kind = rng.randrange(4)
    if kind == 0:
        speed, hours = rng.randint(4, 120), rng.randint(2, 9)
        return (f"{name} travels at {speed} km/h for {hours} hours. How far does {name} go?",
                [f"distance = speed × time = {speed} × {hours}"], f"{speed * hours} km")
    if kind == 1:
        item, count, price, paid = rng.choice(ITEMS), rng.randint(2, 15), rng.randint(2, 40), 0
        cost = count * price
        paid = (cost // 50 + 1) * 50
        return (f"{name} buys {count} {item} at {price} dollars each and pays with {paid} dollars. How much change does {name} get?",
                [f"cost = {count} × {price} = {cost}", f"change = {paid} - {cost} = {paid - cost}"], f"{paid - cost} dollars")
    if kind == 2:
        age, gap, years = rng.randint(5, 40), rng.randint(2, 30), rng.randint(2, 15)
        return (f"{name} is {age} years old and {other} is {gap} years older. How old will {other} be in {years} years?",
                [f"{other} is {age} + {gap} = {age + gap} now", f"in {years} years: {age + gap} + {years} = {age + gap + years}"],
                str(age + gap + years))
    workers, days = rng.randint(2, 12), rng.randint(2, 30)
    more = workers * rng.randint(2, 3)
    total = workers * days
    return (f"{workers} people finish a job in {days} days. How many days would {more} people take at the same rate?",
            [f"work = {workers} × {days} = {total} person-days", f"{total} ÷ {more} = {Fraction(total, more)}"],
            f"{Fraction(total, more)} days")


FAMILIES: list[Callable[[random.Random], Problem]] = [
    addition, multiplication, long_division, order_of_operations, fractions, percentages, linear_equation,
    linear_system, quadratic, euclid, factorisation, word_problem,
]


def _plain(statement: str) -> str:
    return statement.replace("$ ", "").replace(" $", "").replace("\\times", "×").replace("\\frac", "frac")


def render(problems: list[Problem], style: int, title: str) -> str:
    lines = [title, ""]
    for number, (statement, steps, answer) in enumerate(problems, 1):
        if style == 0:  # textbook
            lines += [f"Problem {number}. {_plain(statement)}", "Solution.", *steps, f"Answer: {answer}", ""]
        elif style == 1:  # question and answer
            lines += [f"Q: {_plain(statement)}", "A: " + "; ".join(steps) + f". So the answer is {answer}.", ""]
        elif style == 2:  # LaTeX
            lines += [f"\\paragraph{{Exercise {number}}} {statement}", "\\begin{enumerate}",
                      *[f"  \\item {step}" for step in steps], "\\end{enumerate}", f"\\textbf{{Answer:}} {answer}", ""]
        else:  # numbered steps
            lines += [f"{number}) {_plain(statement)}", *[f"   Step {i}: {step}" for i, step in enumerate(steps, 1)],
                      f"   Result: {answer}", ""]
    return "\n".join(lines).rstrip() + "\n"


TITLES = ["Practice worksheet", "Worked examples", "Homework with solutions", "Review exercises",
          "Mixed problems", "Warm-up set", "Exam preparation", "Drill with answers"]


def generate_math(source: SourceConfig, count: int) -> Iterator[Document]:
    """`count` worksheets, deterministic for the source's seed."""
    for index in range(count):
        rng = random.Random(f"math:{source.seed}:{index}")
        problems = [rng.choice(FAMILIES)(rng) for _ in range(rng.randint(3, 7))]
        style = rng.randrange(4)
        title = f"{rng.choice(TITLES)} {rng.randint(1, 400)}"
        yield Document(id=f"math:{source.seed}:{index}", text=render(problems, style, title), source=source.label,
                       domain=source.domain, metadata={"style": ["textbook", "qa", "latex", "steps"][style],
                                                       "problems": len(problems)})
