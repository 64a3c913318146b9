"""Reading a model reply: one code block to run, a final answer, or a format error."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# ```python / ```py / ```bash / ```sh / ```shell, then the code, then a closing fence on its own line.
_BLOCK = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
_ANSWER = re.compile(r"^[ \t]*ANSWER:[ \t]*(.*?)[ \t]*$", re.M)
_LANGUAGES = {"python": "python", "py": "python", "python3": "python", "bash": "bash", "sh": "bash", "shell": "bash"}


@dataclass(frozen=True)
class Action:
    """What a reply asks for."""

    kind: Literal["code", "submit", "format_error"]
    language: str | None = None
    code: str | None = None
    answer: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def parse_reply(text: str) -> Action:
    """One tagged code block → run it; no block and an ``ANSWER:`` line → submit; anything else → format error.

    The reasoning of a thinking model (before ``</think>``) is ignored.
    """
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    blocks = _BLOCK.findall(text)
    if len(blocks) > 1:
        return Action("format_error", error=f"the reply has {len(blocks)} code blocks, not one")
    if len(blocks) == 1:
        tag, code = blocks[0]
        language = _LANGUAGES.get(tag.lower())
        if language is None:
            shown = f"```{tag}" if tag else "an untagged ```"
            return Action("format_error", error=f"{shown} block cannot run; tag it python or bash")
        if not code.strip():
            return Action("format_error", error="the code block is empty")
        return Action("code", language=language, code=code)
    answers = _ANSWER.findall(text)
    if answers:
        return Action("submit", answer=answers[-1])
    if "```" in text:
        return Action("format_error", error="the code block is not closed with ``` on its own line")
    return Action("format_error", error="the reply has no code block and no ANSWER: line")
