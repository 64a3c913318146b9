"""Laguna's chat format: lagoon's Python renderer equals the published template, by hand and via transformers."""

from __future__ import annotations

import json
import warnings

import pytest

from lagoon.infer.chat import DEFAULT_SYSTEM_PROMPT, ReplyStream, parse_reply, render_chat
from lagoon.tokens import EOS

SYSTEM_DEFAULT = f"{EOS}<system>\n\n{DEFAULT_SYSTEM_PROMPT}\n</system>\n"
TOOL = {"type": "function", "function": {"name": "run", "description": "Run code — safely",
                                         "parameters": {"type": "object", "properties": {"code": {"type": "string"}}}}}
TOOL_INSTRUCTIONS = ("</available_tools>\n\nFor each function call, return an unescaped XML-like object with function "
                     "name and arguments within '<tool_call>' and '</tool_call>' tags, like here:\n<tool_call>function-name"
                     "\n<arg_key>argument-key</arg_key>\n<arg_value>value-of-argument-key</arg_value>\n</tool_call>")

# (messages, render kwargs, expected text) written out by hand from the published template.
CASES = {
    "user-only-thinking-off": (
        [{"role": "user", "content": "Hello"}],
        {"add_generation_prompt": True},
        SYSTEM_DEFAULT + "<user>\nHello\n</user>\n<assistant>\n</think>"),
    "system-reasoning-history-thinking-on": (
        [{"role": "system", "content": "Be brief.  \n"},
         {"role": "user", "content": "What is 2+2?"},
         {"role": "assistant", "content": "4", "reasoning_content": "\nAdd them.\n"},
         {"role": "user", "content": "And 3+3?"}],
        {"add_generation_prompt": True, "enable_thinking": True},
        f"{EOS}<system>\n\nBe brief.\n</system>\n<user>\nWhat is 2+2?\n</user>\n"
        "<assistant>\n<think>\nAdd them.\n</think>\n4\n</assistant>\n<user>\nAnd 3+3?\n</user>\n<assistant>\n<think>"),
    "tools-call-and-result": (
        [{"role": "system", "content": "You write code."},
         {"role": "user", "content": "List files"},
         {"role": "assistant", "content": "",
          "tool_calls": [{"type": "function", "function": {"name": "run", "arguments": {"code": "ls", "timeout": 5}}}]},
         {"role": "tool", "content": "a.py\nb.py"},
         {"role": "assistant", "content": "Two files."}],
        {"tools": [TOOL]},
        f"{EOS}<system>\n\nYou write code.\n\n### Tools\n\nYou may call functions to assist with the user query.\n"
        "All available function signatures are listed below:\n<available_tools>\n" + json.dumps(TOOL, ensure_ascii=False)
        + "\n" + TOOL_INSTRUCTIONS + "\n</system>\n<user>\nList files\n</user>\n<assistant>\n</think>\n<tool_call>run\n"
        "<arg_key>code</arg_key>\n<arg_value>ls</arg_value>\n<arg_key>timeout</arg_key>\n<arg_value>5</arg_value>\n"
        "</tool_call>\n</assistant>\n<tool_response>\na.py\nb.py\n</tool_response>\n<assistant>\n</think>\nTwo files.\n"
        "</assistant>\n"),
    "blank-system-inline-think-extra-system": (
        [{"role": "system", "content": "  "},
         {"role": "user", "content": "hi"},
         {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHello!"},
         {"role": "system", "content": "Be formal."},
         {"role": "user", "content": "bye"}],
        {"add_generation_prompt": True},
        f"{EOS}<user>\nhi\n</user>\n<assistant>\n<think>\nhmm\n</think>\nHello!\n</assistant>\n"
        "<system>\nBe formal.\n</system>\n<user>\nbye\n</user>\n<assistant>\n</think>"),
    "raw-assistant-thinking-on": (
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "why</think>\nanswer"}],
        {"enable_thinking": True, "render_assistant_messages_raw": True},
        SYSTEM_DEFAULT + "<user>\nx\n</user>\n<assistant>\n<think>why</think>\nanswer\n</assistant>\n"),
}

# More conversations that only need to agree with the Jinja template.
EXTRA = {
    "tools-thinking-on-with-reasoning-call": (
        [{"role": "user", "content": "Run it"},
         {"role": "assistant", "content": "Running.", "reasoning": "I should run",
          "tool_calls": [{"function": {"name": "run", "arguments": {"code": "print('é')", "args": [1, "ü"]}}}]},
         {"role": "tool", "content": "é"}],
        {"tools": [TOOL], "enable_thinking": True, "add_generation_prompt": True}),
    "no-system-no-default-when-empty-and-tools": (
        [{"role": "system", "content": ""}, {"role": "user", "content": "a"}],
        {"tools": [TOOL, {"type": "function", "function": {"name": "x"}}]}),
    "content-none-and-empty-reasoning": (
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": None, "reasoning": ""},
         {"role": "user", "content": "b"}],
        {"add_generation_prompt": True, "enable_thinking": True}),
    "raw-already-terminated": (
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "</think>done\n</assistant>\n"}],
        {"render_assistant_messages_raw": True}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_renderer_matches_hand_written_expectations(name):
    messages, kwargs, expected = CASES[name]
    assert render_chat(messages, **kwargs) == expected


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))


@pytest.mark.parametrize("name", sorted(CASES) + sorted(EXTRA))
def test_lagoon_tokenizer_template_renders_identically_in_transformers(name, hf_tokenizer):
    messages, kwargs = (CASES.get(name) or EXTRA[name])[:2]
    kwargs = dict(kwargs)
    tools = kwargs.pop("tools", None)
    theirs = hf_tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, **kwargs)
    assert render_chat(messages, tools=tools, **kwargs) == theirs


def test_lagoon_tokenizer_encodes_a_rendering_with_laguna_special_ids(tokenizer_dir):
    from lagoon.infer.tokenizer import Tokenizer
    from lagoon.tokens import EOS_ID, TOKEN_IDS

    tokenizer = Tokenizer.from_dir(tokenizer_dir)
    text = render_chat([{"role": "user", "content": "hi"}], add_generation_prompt=True, enable_thinking=True)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids[0] == EOS_ID and ids[-3] == TOKEN_IDS["<assistant>"] and ids[-1] == TOKEN_IDS["<think>"] == 18
    assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_parse_reply_splits_reasoning_content_and_tool_calls():
    text = "\nLet me look.\n</think>\nChecking.\n<tool_call>run\n<arg_key>code</arg_key>\n<arg_value>ls -l</arg_value>\n" \
           "<arg_key>timeout</arg_key>\n<arg_value>5</arg_value>\n</tool_call>\n"
    reply = parse_reply(text, enable_thinking=True, tools_enabled=True)
    assert reply.reasoning_content == "Let me look."
    assert reply.content == "Checking."
    assert [c["function"]["name"] for c in reply.tool_calls] == ["run"]
    assert json.loads(reply.tool_calls[0]["function"]["arguments"]) == {"code": "ls -l", "timeout": 5}
    # Round trip: the parsed reply renders back to the text the model produced.
    rendered = render_chat([{"role": "assistant", "content": reply.content, "reasoning_content": reply.reasoning_content,
                             "tool_calls": reply.tool_calls}])
    assert rendered.endswith("<assistant>\n<think>" + text + "</assistant>\n")

    off = parse_reply("\nJust the answer.\n", enable_thinking=False, tools_enabled=False)
    assert off.content == "Just the answer." and off.reasoning_content is None
    unfinished = parse_reply("\nstill thinking", enable_thinking=True, tools_enabled=False)
    assert unfinished.reasoning_content == "still thinking" and unfinished.content == ""


@pytest.mark.parametrize("chunk", [1, 2, 3, 7])
def test_streamed_reply_equals_the_parsed_reply(chunk):
    text = "<think>\n Weighing options \n</think>\n\nThe answer  is 4.\n\n<tool_call>run\n<arg_key>code</arg_key>\n" \
           "<arg_value>1+3</arg_value>\n</tool_call>\n"
    for thinking in (True, False):
        stream = ReplyStream(thinking, tools_enabled=True)
        reasoning, content = "", ""
        for start in range(0, len(text), chunk):
            r, c = stream.feed(text[start:start + chunk])
            reasoning, content = reasoning + r, content + c
        r, c, calls = stream.finish()
        reasoning, content = reasoning + r, content + c
        expected = parse_reply(text, thinking, tools_enabled=True)
        assert (reasoning or None) == expected.reasoning_content
        assert content == (expected.content or "")
        assert calls == expected.tool_calls
