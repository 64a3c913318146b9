"""Synthetic data, from both ends of Poolside's spectrum; each generator writes its own domain.

Pipeline-heavy (``code_exercises``): features are extracted from seed code documents with `ast` —
function signatures, docstrings, doctest examples, bodies, and the one-line summaries of a module's other
functions — and recomposed into new exercises: implement-from-specification (signature + docstring +
examples → solution), write-the-tests (doctest examples → pytest functions), explain-the-code (body →
docstring summary), and which-function-does-this (summaries of sibling functions → a multiple-choice
question with its answer). A document combines up to three exercises from one seed file.

Seed-heavy (``rephrase``): a seed document is rewritten as a Q&A sheet, a list of key points, or a
user/assistant dialogue (rendered with the chat template). The offline default uses templates over the
seed's sections and sentences; ``backend = "endpoint"`` asks any OpenAI-compatible server (Ollama or vLLM
serving Laguna XS.2, `lagoon serve`, …) to do the rewriting (`lagoon.data.endpoint`).

Generators are deterministic for a (generator, seed document) pair, so builds are reproducible.
"""

from __future__ import annotations

import ast
import random
import re
import textwrap

from lagoon.data.chat import render_chat
from lagoon.data.sources import Document

REPHRASE_FORMATS = ("qa", "list", "dialogue")
_DOCTEST = re.compile(r"^\s*>>> (.+)$")


# ---------------------------------------------------------------------------------------- pipeline-heavy
def _doctest_pairs(docstring: str) -> list[tuple[str, str]]:
    """(expression, expected output) pairs of single-line doctests."""
    lines, pairs = docstring.splitlines(), []
    for index, line in enumerate(lines):
        match = _DOCTEST.match(line)
        if match and index + 1 < len(lines):
            expected = lines[index + 1].strip()
            if expected and not expected.startswith((">>>", "...", "Traceback")):
                pairs.append((match.group(1).strip(), expected))
    return pairs


def _summary(docstring: str) -> str:
    return docstring.strip().split("\n\n")[0].replace("\n", " ").strip()


def extract_functions(source_text: str) -> list[dict[str, object]]:
    """Features of every documented public top-level function (and method) of a Python source file."""
    try:
        tree = ast.parse(source_text)
    except (SyntaxError, ValueError, RecursionError):
        return []
    lines = source_text.splitlines()
    features = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
            continue
        docstring = ast.get_docstring(node)
        if not docstring or len(docstring) < 40:
            continue
        if node.end_lineno - node.lineno > 60:
            continue
        # Whole lines by line numbers: ast.get_source_segment re-splits the file on every call.
        source = "\n".join(lines[node.lineno - 1 : node.end_lineno])
        returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
        features.append({
            "name": node.name,
            "signature": f"def {node.name}({ast.unparse(node.args)}){returns}:",
            "docstring": docstring.strip(),
            "summary": _summary(docstring),
            "doctests": _doctest_pairs(docstring),
            "source": textwrap.dedent(source),
        })
    return features


def _implement(feature, rng) -> str:
    examples = "".join(f"\n    >>> {expr}\n    {out}" for expr, out in feature["doctests"][:3])
    return (f"Exercise: implement `{feature['name']}`.\n\n{feature['signature']}\n"
            f'    """{_summary(feature["docstring"])}{examples}\n    """\n\nSolution:\n\n```python\n{feature["source"]}\n```\n')


def _tests(feature, rng) -> str:
    tests = "\n\n".join(f"def test_{feature['name']}_{i}():\n    assert {expr} == {out}"
                        for i, (expr, out) in enumerate(feature["doctests"][:4], 1))
    return (f"Exercise: write pytest tests for `{feature['name']}` from its documented examples.\n\n"
            f"Specification: {feature['summary']}\n\n```python\n{tests}\n```\n")


def _explain(feature, rng) -> str:
    body = feature["source"]
    lines = body.splitlines()
    # Hide the docstring: the explanation must come from reading the code.
    stripped = "\n".join(line for line in lines if feature["summary"][:30] not in line)
    return (f"Question: what does this function do?\n\n```python\n{stripped}\n```\n\n"
            f"Answer: {feature['summary']}\n")


def _which(feature, siblings, rng) -> str | None:
    others = [s for s in siblings if s["name"] != feature["name"] and s["summary"] != feature["summary"]]
    if len(others) < 3:
        return None
    options = [feature, *rng.sample(others, 3)]
    rng.shuffle(options)
    letters = "ABCD"
    listed = "\n".join(f"{letters[i]}. `{option['name']}`" for i, option in enumerate(options))
    answer = letters[options.index(feature)]
    return (f"Which function does the following?\n\n> {feature['summary']}\n\n{listed}\n\n"
            f"Answer: {answer} (`{feature['name']}`).\n")


def code_exercises(seed: Document, domain: str) -> list[Document]:
    """Exercises recomposed from one seed code file (deterministic for the seed's id)."""
    features = extract_functions(seed.text)
    if not features:
        return []
    rng = random.Random(f"code_exercises:{seed.id}")
    rng.shuffle(features)
    documents = []
    for start in range(0, len(features), 3):
        parts = []
        for feature in features[start:start + 3]:
            makers = [_implement, _explain] + ([_tests] if feature["doctests"] else [])
            part = rng.choice(makers)(feature, rng)
            if rng.random() < 0.3:
                part = _which(feature, features, rng) or part
            parts.append(part)
        module = seed.metadata.get("path", seed.id)
        text = f"Exercises on {module}\n\n" + "\n".join(parts)
        documents.append(Document(id=f"{domain}:{seed.id}:{start // 3}", text=text, source=f"synthetic:code_exercises",
                                  domain=domain, metadata={"seed": seed.id, "generator": "code_exercises"}))
    return documents


# ---------------------------------------------------------------------------------------- seed-heavy
def _sections(text: str) -> list[tuple[str, str]]:
    """(title, body) sections: a non-indented first line followed by its paragraph(s)."""
    sections = []
    for block in re.split(r"\n\s*\n", text):
        block = block.strip("\n")
        if not block.strip():
            continue
        lines = block.splitlines()
        head, rest = lines[0].strip(), textwrap.dedent("\n".join(lines[1:])).strip()
        if rest and len(head) < 120 and not set(head) <= {"=", "-", "*"}:
            sections.append((head, " ".join(rest.split())))
        elif len(block.split()) >= 8 and sections:
            title, body = sections[-1]
            sections[-1] = (title, body + " " + " ".join(block.split()))
        elif len(block.split()) >= 8:
            sections.append(("", " ".join(block.split())))
    return [(title.rstrip(":"), body) for title, body in sections if len(body.split()) >= 6]


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z(`'\"])", text) if len(s.split()) >= 4]


def _topic(seed: Document) -> str:
    return str(seed.metadata.get("module") or seed.metadata.get("topic") or seed.text.strip().splitlines()[0][:60])


def template_rephrase(seed: Document, style: str, rng: random.Random) -> str | None:
    """Rewrite a seed document as a Q&A sheet, a key-point list or a dialogue, by templates."""
    sections = _sections(seed.text)
    if not sections:
        return None
    topic = _topic(seed)
    chosen = sections if len(sections) <= 6 else rng.sample(sections, 6)
    if style == "qa":
        asks = ["What does {t} do?", "What is {t}?", "Can you explain {t}?", "How does {t} behave?"]
        items = [f"Q: {rng.choice(asks).format(t=title or topic)}\nA: {' '.join(_sentences(body)[:3]) or body}"
                 for title, body in chosen]
        return f"Questions and answers about {topic}\n\n" + "\n\n".join(items) + "\n"
    if style == "list":
        points = [sentence for _, body in chosen for sentence in _sentences(body)[:2]]
        if len(points) < 2:
            return None
        return f"Key points about {topic}:\n\n" + "\n".join(f"- {point}" for point in points[:12]) + "\n"
    messages = []
    openers = ["I'm reading about {t}. What is {s}?", "Quick question about {t}: what does {s} do?", "Explain {s}, please."]
    for title, body in chosen[:4]:
        messages.append({"role": "user", "content": rng.choice(openers).format(t=topic, s=title or topic)})
        messages.append({"role": "assistant", "content": " ".join(_sentences(body)[:4]) or body})
    return render_chat(messages)


def rephrase_prompt(seed: Document, style: str) -> str:
    """The instruction sent to an OpenAI-compatible endpoint for seed-heavy rephrasing."""
    shapes = {"qa": "a set of questions and answers", "list": "a list of key points",
              "dialogue": "a dialogue between a curious user and a knowledgeable assistant"}
    return (f"Rewrite the following document as {shapes[style]}. Keep every fact and every name; do not add "
            f"facts that are not in it. Reply with the rewrite only.\n\n---\n{seed.text[:6000]}\n---")
