"""OpenAI-compatible request parsing and response bodies (completions and chat completions).

Requests are checked field by field; a bad value raises `RequestError` naming the parameter, which the
server returns as a 400 JSON error in OpenAI's shape. Unknown fields are ignored (clients send extras).
Extra body fields beyond OpenAI's (vLLM's names): ``top_k``, ``stop_token_ids``, ``return_token_ids``,
``include_stop_str_in_output``, ``skip_special_tokens``, ``ignore_eos``, ``logprobs_mode``,
``chat_template_kwargs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lagoon.infer.chat import tool_call_arguments
from lagoon.infer.request import Completion
from lagoon.infer.sampling import SamplingParams
from lagoon.infer.tokenizer import TextCodec


class RequestError(ValueError):
    """A client mistake; becomes an HTTP error with an OpenAI-style JSON body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


_MISSING = object()


def _field(body: dict, name: str, kinds: type | tuple[type, ...], default: Any = None, *, nullable: bool = True) -> Any:
    value = body.get(name, _MISSING)
    if value is _MISSING or (value is None and nullable):
        return default
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    # bool is an int in Python; only accept it where a bool is asked for.
    if isinstance(value, bool) and bool not in kinds:
        raise RequestError(f"'{name}' must be {_names(kinds)}, got {value!r}", name)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kinds):
        raise RequestError(f"'{name}' must be {_names(kinds)}, got {type(value).__name__}", name)
    return value


def _names(kinds: tuple[type, ...]) -> str:
    words = {int: "an integer", float: "a number", bool: "a boolean", str: "a string", list: "a list", dict: "an object"}
    return " or ".join(words.get(k, k.__name__) for k in kinds)


def _int_list(body: dict, name: str) -> list[int] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise RequestError(f"'{name}' must be a list of integers", name)
    return value


@dataclass
class GenerationRequest:
    """What the server hands the engine for one OpenAI request."""

    model: str | None
    prompts: list[str | list[int]]
    params: SamplingParams
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    return_token_ids: bool = False
    want_logprobs: bool = False
    # Chat only
    enable_thinking: bool = False
    tools_enabled: bool = False


def _sampling(body: dict) -> SamplingParams:
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not isinstance(stop, list) or any(not isinstance(s, str) for s in stop):
        raise RequestError("'stop' must be a string or a list of strings", "stop")
    max_tokens = _field(body, "max_tokens", int, None)
    max_tokens = _field(body, "max_completion_tokens", int, max_tokens)
    params = SamplingParams(
        max_tokens=max_tokens if max_tokens is not None else 16,
        temperature=_field(body, "temperature", float, 1.0),
        top_p=_field(body, "top_p", float, 1.0),
        top_k=_field(body, "top_k", int, 0),
        stop=[s for s in stop if s],
        stop_token_ids=_int_list(body, "stop_token_ids"),
        ignore_eos=_field(body, "ignore_eos", bool, False),
        seed=_field(body, "seed", int, None),
        logprobs_mode=_field(body, "logprobs_mode", str, "sampling"),
        include_stop_str_in_output=_field(body, "include_stop_str_in_output", bool, False),
        skip_special_tokens=_field(body, "skip_special_tokens", bool, True),
    )
    try:
        params.validate()
    except ValueError as error:
        raise RequestError(str(error), str(error).split(" ", 1)[0]) from None
    if params.top_k == -1:
        params.top_k = 0
    return params


def _common(body: Any, max_logprobs: int) -> tuple[int, bool, bool, bool]:
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    n = _field(body, "n", int, 1)
    if not 1 <= n <= 64:
        raise RequestError(f"'n' must be between 1 and 64, got {n}", "n")
    if _field(body, "best_of", int, None) not in (None, n, 1):
        raise RequestError("'best_of' is not supported", "best_of")
    # Reject what lagoon does not implement rather than ignore it: the logprobs must describe the real sampler.
    for name, neutral in (("presence_penalty", 0), ("frequency_penalty", 0), ("repetition_penalty", 1), ("min_p", 0)):
        value = body.get(name)
        if value is not None and value != neutral:
            raise RequestError(f"'{name}' is not supported (only {neutral})", name)
    if body.get("logit_bias"):
        raise RequestError("'logit_bias' is not supported", "logit_bias")
    stream = _field(body, "stream", bool, False)
    options = _field(body, "stream_options", dict, {})
    include_usage = bool(options.get("include_usage", False))
    return_token_ids = _field(body, "return_token_ids", bool, False)
    return n, stream, include_usage, return_token_ids


def parse_completion(body: Any, max_logprobs: int) -> GenerationRequest:
    """A /v1/completions body: `prompt` is a string, a list of token ids, or a list of either."""
    n, stream, include_usage, return_token_ids = _common(body, max_logprobs)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts: list[str | list[int]] = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif (isinstance(prompt, list) and prompt and all(isinstance(p, list) for p in prompt)
          and all(q and all(isinstance(t, int) and not isinstance(t, bool) for t in q) for q in prompt)):
        prompts = [list(p) for p in prompt]
    else:
        raise RequestError("'prompt' must be a non-empty string, a list of token ids, or a list of either", "prompt")
    if _field(body, "echo", bool, False):
        raise RequestError("'echo' is not supported", "echo")
    if body.get("suffix"):
        raise RequestError("'suffix' is not supported", "suffix")
    params = _sampling(body)
    logprobs = _field(body, "logprobs", int, None)
    if logprobs is not None and not 0 <= logprobs <= max_logprobs:
        raise RequestError(f"'logprobs' must be between 0 and {max_logprobs}, got {logprobs}", "logprobs")
    params.logprobs = logprobs or None
    params.return_routed_experts = _field(body, "return_routed_experts", bool, False)
    return GenerationRequest(model=_field(body, "model", str, None), prompts=prompts, params=params, n=n,
                             stream=stream, include_usage=include_usage, return_token_ids=return_token_ids,
                             want_logprobs=logprobs is not None)


_ROLES = {"system", "developer", "user", "assistant", "tool"}


def normalize_messages(raw: Any) -> list[dict[str, Any]]:
    """Check OpenAI chat messages and put them in the form the chat template reads.

    Content given as a list of text parts is joined; ``developer`` is a system turn; tool-call arguments
    sent as JSON strings become objects.
    """
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty list", "messages")
    messages = []
    for index, message in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object", where)
        role = message.get("role")
        if role not in _ROLES:
            raise RequestError(f"{where}.role must be one of {sorted(_ROLES)}, got {role!r}", f"{where}.role")
        content = message.get("content")
        if isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise RequestError(f"{where}.content parts must be text parts", f"{where}.content")
                texts.append(part["text"])
            content = "".join(texts)
        elif content is not None and not isinstance(content, str):
            raise RequestError(f"{where}.content must be a string, a list of text parts or null", f"{where}.content")
        normalized = {**message, "role": "system" if role == "developer" else role, "content": content}
        if message.get("tool_calls"):
            calls = message["tool_calls"]
            if not isinstance(calls, list):
                raise RequestError(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
            normalized["tool_calls"] = []
            for call in calls:
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    raise RequestError(f"{where}.tool_calls entries need function.name", f"{where}.tool_calls")
                try:
                    arguments = tool_call_arguments(function.get("arguments"))
                except ValueError as error:
                    raise RequestError(f"{where}: {error}", f"{where}.tool_calls") from None
                normalized["tool_calls"].append({**call, "function": {**function, "arguments": arguments}})
        messages.append(normalized)
    return messages


def thinking_requested(body: dict) -> bool:
    """Reasoning on/off: ``chat_template_kwargs.enable_thinking`` (vLLM) wins over ``reasoning_effort``."""
    kwargs = _field(body, "chat_template_kwargs", dict, {})
    if "enable_thinking" in kwargs:
        if not isinstance(kwargs["enable_thinking"], bool):
            raise RequestError("'chat_template_kwargs.enable_thinking' must be a boolean", "chat_template_kwargs")
        return kwargs["enable_thinking"]
    effort = _field(body, "reasoning_effort", str, None)
    if effort is None:
        return False
    if effort not in ("none", "minimal", "low", "medium", "high", "xhigh"):
        raise RequestError(f"'reasoning_effort' must be none, minimal, low, medium, high or xhigh; got {effort!r}",
                           "reasoning_effort")
    return effort != "none"


def parse_chat(body: Any, max_logprobs: int) -> tuple[GenerationRequest, list[dict[str, Any]], list | None, bool]:
    """A /v1/chat/completions body → (request without prompts, messages, tools, raw-assistant flag)."""
    n, stream, include_usage, return_token_ids = _common(body, max_logprobs)
    messages = normalize_messages(body.get("messages"))
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or any(not isinstance(t, dict) for t in tools)):
        raise RequestError("'tools' must be a list of objects", "tools")
    if body.get("tool_choice") == "none":
        tools = None
    enable_thinking = thinking_requested(body)
    raw = bool(_field(body, "chat_template_kwargs", dict, {}).get("render_assistant_messages_raw", False))
    params = _sampling(body)
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        params.max_tokens = 0  # the server fills in "the rest of the context" once the prompt length is known
    want_logprobs = _field(body, "logprobs", bool, False)
    top = _field(body, "top_logprobs", int, None)
    if top is not None and not 0 <= top <= max_logprobs:
        raise RequestError(f"'top_logprobs' must be between 0 and {max_logprobs}, got {top}", "top_logprobs")
    params.logprobs = (top or None) if want_logprobs else None
    request = GenerationRequest(model=_field(body, "model", str, None), prompts=[], params=params, n=n, stream=stream,
                                include_usage=include_usage, return_token_ids=return_token_ids,
                                want_logprobs=want_logprobs, enable_thinking=enable_thinking,
                                tools_enabled=bool(tools))
    return request, messages, tools, raw


# ----------------------------------------------------------------------------------------------------
# Response pieces


def completion_logprobs(completion_ids: list[int], logprobs: list[float], top: list | None, offsets: list[int],
                        tokenizer: TextCodec | None) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object: tokens, token_logprobs, top_logprobs, text_offset."""
    text = _token_namer(tokenizer)
    return {
        "tokens": [text(t) for t in completion_ids],
        "token_logprobs": logprobs,
        "top_logprobs": [{text(i): v for i, v in step} for step in top] if top is not None else None,
        "text_offset": offsets,
    }


def chat_logprobs(completion_ids: list[int], logprobs: list[float], top: list | None,
                  tokenizer: TextCodec | None) -> dict[str, Any]:
    """The chat ``logprobs`` object: one entry per generated token with its alternatives."""
    text = _token_namer(tokenizer)

    def entry(token_id: int, value: float) -> dict[str, Any]:
        token = text(token_id)
        return {"token": token, "logprob": value, "bytes": list(token.encode("utf-8"))}

    content = []
    for index, (token_id, value) in enumerate(zip(completion_ids, logprobs)):
        item = entry(token_id, value)
        item["top_logprobs"] = [entry(i, v) for i, v in top[index]] if top is not None else []
        content.append(item)
    return {"content": content}


def _token_namer(tokenizer: TextCodec | None):
    if tokenizer is None:
        return lambda token_id: f"token_id:{token_id}"
    cache: dict[int, str] = {}

    def name(token_id: int) -> str:
        if token_id not in cache:
            cache[token_id] = tokenizer.token_text(token_id)
        return cache[token_id]

    return name


def usage(prompt_lengths: list[int], completions: list[Completion]) -> dict[str, int]:
    prompt = sum(prompt_lengths)
    generated = sum(len(c.token_ids) for c in completions)
    return {"prompt_tokens": prompt, "completion_tokens": generated, "total_tokens": prompt + generated}
