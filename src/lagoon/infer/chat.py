"""Laguna's chat format in Python: render conversations and split model output into reasoning, content, tool calls.

`render_chat` produces byte-for-byte the text of Laguna XS.2's published chat template
(``lagoon/chat_template.jinja``, run the way transformers' ``apply_chat_template`` runs it: Jinja with
``trim_blocks`` and ``lstrip_blocks``, ``tojson`` = ``json.dumps(ensure_ascii=False)``). The Jinja file stays
the authority — tokenizers carry it for transformers, vLLM and SGLang — and tests check the two agree.

The format, per turn:

    〈|EOS|〉                                           always first (BOS = EOS, id 2)
    <system>\\n\\n{system}[tools section]\\n</system>\\n   default system prompt unless messages[0] is a system turn
    <user>\\n{content}\\n</user>\\n
    <assistant>\\n<think>\\n{reasoning}\\n</think>\\n{content}\\n{tool calls}</assistant>\\n
                                                       (a bare ``</think>\\n`` when there is no reasoning)
    <tool_response>\\n{content}\\n</tool_response>\\n
    <system>\\n{content}\\n</system>\\n                  later system turns
    <assistant>\\n</think>   or   <assistant>\\n<think>    generation prompt, thinking off / on

A tool call is ``<tool_call>{name}\\n<arg_key>{k}</arg_key>\\n<arg_value>{v}</arg_value>\\n…</tool_call>\\n``
(string values raw, others as JSON) — the GLM-4.5 style that vLLM/SGLang's ``poolside_v1`` parsers read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from lagoon.tokens import EOS

DEFAULT_SYSTEM_PROMPT = ("You are a helpful, conversationally-fluent assistant made by Poolside. You are here to be "
                         "helpful to users through natural language conversations.")

_TOOL_FORMAT = ("<tool_call>function-name\n<arg_key>argument-key</arg_key>\n<arg_value>value-of-argument-key</arg_value>\n"
                "</tool_call>")
_TOOLS_INTRO = ("You may call functions to assist with the user query.\n"
                "All available function signatures are listed below:\n<available_tools>\n")
_TOOLS_THINKING = ("</available_tools>\n\nWrap your thinking in '<think>', '</think>' tags, followed by a function call. "
                   "For each function call, return an unescaped XML-like object with function name and arguments within "
                   "'<tool_call>' and '</tool_call>' tags, like here:\n<think> your thoughts here </think>\n" + _TOOL_FORMAT)
_TOOLS_PLAIN = ("</available_tools>\n\nFor each function call, return an unescaped XML-like object with function name "
                "and arguments within '<tool_call>' and '</tool_call>' tags, like here:\n" + _TOOL_FORMAT)


def _tojson(value: Any) -> str:
    # transformers' `tojson` filter: json.dumps with ensure_ascii=False and default separators.
    return json.dumps(value, ensure_ascii=False)


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


def generation_prompt(enable_thinking: bool) -> str:
    """What follows the conversation when the model is to answer: ``<assistant>\\n`` and the reasoning switch."""
    return "<assistant>\n" + ("<think>" if enable_thinking else "</think>")


def render_chat(messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                add_generation_prompt: bool = False, enable_thinking: bool = False,
                render_assistant_messages_raw: bool = False) -> str:
    """Render `messages` exactly as Laguna's chat template does (see the module docstring)."""
    out = [EOS]
    system = DEFAULT_SYSTEM_PROMPT
    if messages and messages[0].get("role") == "system":
        system = messages[0].get("content")
    has_system = isinstance(system, str) and bool(system.strip())
    if has_system or tools:
        out.append("<system>\n")
        if has_system:
            out.append("\n" + system.rstrip())
        if tools:
            listing = _TOOLS_INTRO + "".join(_tojson(tool) + "\n" for tool in tools)
            out.append("\n\n### Tools\n\n" + listing + (_TOOLS_THINKING if enable_thinking else _TOOLS_PLAIN))
        out.append("\n</system>\n")

    for index, message in enumerate(messages):
        role = message.get("role")
        content = _text(message)
        if role == "user":
            out.append("<user>\n" + content + "\n</user>\n")
        elif role == "assistant":
            out.append("<assistant>\n")
            if render_assistant_messages_raw:
                out.append(_raw_assistant(content, enable_thinking))
            else:
                out.append(_assistant(message, content))
        elif role == "tool":
            out.append("<tool_response>\n" + content + "\n</tool_response>\n")
        elif role == "system" and index != 0:
            out.append("<system>\n" + content + "\n</system>\n")
    if add_generation_prompt:
        out.append(generation_prompt(enable_thinking))
    return "".join(out)


def _raw_assistant(content: str, enable_thinking: bool) -> str:
    """`render_assistant_messages_raw`: the content verbatim, with the reasoning switch and end tag added if absent."""
    switch = "<think>" if enable_thinking else "</think>"
    text = ("" if content.startswith(switch) else switch) + content
    if not (content.endswith("</assistant>\n") or content.endswith("</assistant>")):
        text += "\n</assistant>"
    return text + "\n"


def _assistant(message: dict[str, Any], content: str) -> str:
    reasoning = ""
    if isinstance(message.get("reasoning"), str):
        reasoning = message["reasoning"]
    elif isinstance(message.get("reasoning_content"), str):
        reasoning = message["reasoning_content"]
    if "</think>" in content:
        if not reasoning:
            reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        content = content.split("</think>")[-1].lstrip("\n")
    parts = ["<think>\n" + reasoning.strip() + "\n</think>\n" if reasoning else "</think>\n"]
    if content.strip():
        parts.append(content.strip() + "\n")
    for call in message.get("tool_calls") or []:
        function = call["function"]
        parts.append("<tool_call>" + function["name"] + "\n")
        for key, value in tool_call_arguments(function.get("arguments")).items():
            rendered = value if isinstance(value, str) else _tojson(value)
            parts.append(f"<arg_key>{key}</arg_key>\n<arg_value>{rendered}</arg_value>\n")
        parts.append("</tool_call>\n")
    parts.append("</assistant>\n")
    return "".join(parts)


def tool_call_arguments(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as a dict; OpenAI clients send them as a JSON string, templates expect a mapping."""
    if arguments is None:
        return {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            raise ValueError(f"tool call arguments are not valid JSON: {arguments[:80]!r}") from None
    if not isinstance(arguments, dict):
        raise ValueError("tool call arguments must be a JSON object")
    return arguments


# ----------------------------------------------------------------------------------------------------
# Parsing what the model generated


@dataclass
class ParsedReply:
    """An assistant reply split the way OpenAI-compatible servers return it."""

    content: str | None
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_ARGUMENT = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)


def split_reasoning(text: str, enable_thinking: bool) -> tuple[str | None, str]:
    """(reasoning, rest) of generated text. With thinking on, reasoning runs until ``</think>`` (all of it if absent)."""
    if not enable_thinking:
        return None, text
    reasoning, _, rest = text.partition("</think>")
    return reasoning.strip().removeprefix("<think>").strip(), rest


def parse_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Take ``<tool_call>…</tool_call>`` blocks out of `text`; return the remaining text and OpenAI-style calls.

    Argument values that parse as JSON become JSON values (the template writes non-strings with ``tojson``);
    the others stay strings. Arguments are re-serialised as a JSON string, as OpenAI's API returns them.
    """
    calls = []
    for index, match in enumerate(_TOOL_CALL.finditer(text)):
        body = match.group(1)
        name, _, arguments_text = body.partition("\n")
        arguments: dict[str, Any] = {}
        for key, raw in _ARGUMENT.findall(arguments_text):
            try:
                arguments[key.strip()] = json.loads(raw)
            except json.JSONDecodeError:
                arguments[key.strip()] = raw
        calls.append({"id": f"call_{index}", "type": "function",
                      "function": {"name": name.strip(), "arguments": json.dumps(arguments, ensure_ascii=False)}})
    return _TOOL_CALL.sub("", text), calls


def parse_reply(text: str, enable_thinking: bool, tools_enabled: bool) -> ParsedReply:
    """Split a whole generated reply (stop token excluded) into reasoning, content and tool calls."""
    reasoning, rest = split_reasoning(text, enable_thinking)
    calls: list[dict[str, Any]] = []
    if tools_enabled and "<tool_call>" in rest:
        rest, calls = parse_tool_calls(rest)
    content = rest.strip()
    return ParsedReply(content=content or (None if calls else ""), reasoning_content=reasoning, tool_calls=calls)


class ReplyStream:
    """The streaming form of `parse_reply`: feed text deltas, get (reasoning_delta, content_delta) pairs.

    Whitespace at either end of the reasoning and the content is held back until more text arrives, so the
    concatenated deltas equal `parse_reply`'s stripped fields. With tools enabled, text from ``<tool_call>``
    on is buffered and returned as calls by `finish`.
    """

    def __init__(self, enable_thinking: bool, tools_enabled: bool):
        self.in_reasoning = enable_thinking
        self.tools_enabled = tools_enabled
        self.buffer = ""             # text not yet classified (a possible partial tag at the end)
        self.pending = {"reasoning": "", "content": ""}  # whitespace held back per channel
        self.started = {"reasoning": False, "content": False}
        self.tool_text: str | None = None

    def _emit(self, channel: str, text: str) -> str:
        if not self.started[channel]:
            text = text.lstrip()
            if channel == "reasoning":
                text = text.removeprefix("<think>").lstrip()
            if not text:
                return ""
            self.started[channel] = True
        text = self.pending[channel] + text
        stripped = text.rstrip()
        self.pending[channel] = text[len(stripped):]
        return stripped

    def feed(self, delta: str) -> tuple[str, str]:
        if self.tool_text is not None:
            self.tool_text += delta
            return "", ""
        self.buffer += delta
        reasoning = ""
        if self.in_reasoning:
            if "</think>" in self.buffer:
                before, self.buffer = self.buffer.split("</think>", 1)
                reasoning = self._emit("reasoning", before)
                self.in_reasoning = False
            else:
                safe, self.buffer = _hold_partial(self.buffer, ("</think>", "<think>"))
                return self._emit("reasoning", safe), ""
        if self.tools_enabled and "<tool_call>" in self.buffer:
            before, after = self.buffer.split("<tool_call>", 1)
            self.tool_text = "<tool_call>" + after
            self.buffer = ""
            return reasoning, self._emit("content", before)
        safe, self.buffer = _hold_partial(self.buffer, ("<tool_call>",) if self.tools_enabled else ())
        return reasoning, self._emit("content", safe)

    def finish(self) -> tuple[str, str, list[dict[str, Any]]]:
        """Flush what is left; returns (reasoning_delta, content_delta, tool_calls)."""
        reasoning, content, calls = "", "", []
        if self.in_reasoning:
            reasoning = self._emit("reasoning", self.buffer)
        else:
            content = self._emit("content", self.buffer)
        self.buffer = ""
        if self.tool_text is not None:
            rest, calls = parse_tool_calls(self.tool_text)
            content += self._emit("content", rest)
        return reasoning, content, calls


def _hold_partial(text: str, tags: tuple[str, ...]) -> tuple[str, str]:
    """Split `text` into (safe, held): held is a suffix that could be the start of one of `tags`."""
    for cut in range(min(len(text), max((len(t) for t in tags), default=0)), 0, -1):
        suffix = text[-cut:]
        if any(tag.startswith(suffix) for tag in tags):
            return text[:-cut], suffix
    return text, ""
