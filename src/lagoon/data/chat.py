"""Render conversations into training text with lagoon's chat template, without importing transformers.

The template (`lagoon.tokens.chat_template`) is the one transformers' ``apply_chat_template`` runs; it uses
transformers' ``{% generation %}`` tag (which only marks assistant spans) and its ``tojson`` filter, both
reproduced here, so a rendered document is byte-identical to what the tokenizer's chat template gives.
Documents in shards get their leading 〈|EOS|〉 from the shard writer, so `render_chat` leaves it off.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from lagoon.tokens import EOS, chat_template


@functools.cache
def _template():
    import jinja2
    from jinja2.ext import Extension

    class GenerationTag(Extension):
        """``{% generation %}…{% endgeneration %}`` renders its body unchanged (transformers tracks the span)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    environment = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, "jinja2.ext.loopcontrols"])
    environment.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    return environment.from_string(chat_template())


def render_chat(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                with_eos: bool = False) -> str:
    """The chat-template text of `messages` (roles system, user, assistant, tool)."""
    text = _template().render(messages=messages, tools=tools, add_generation_prompt=False)
    assert text.startswith(EOS), "the chat template must start every conversation with EOS"
    return text if with_eos else text[len(EOS):]
