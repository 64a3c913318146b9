"""``lagoon serve``: an OpenAI-compatible HTTP server over the engine, with weight-update endpoints for RL.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions``
(SSE streaming as OpenAI does it), and ``GET /v1/weights``, ``POST /v1/weights/{pause,load,receive,resume}``
(see `lagoon.weights.lagoon_server`). Every response carries the served policy version in an
``X-Policy-Version`` header and every generation body in ``policy_version``. Client mistakes get a 4xx
JSON error in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``) and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from lagoon.infer.chat import ReplyStream, parse_reply, render_chat
from lagoon.infer.engine import Engine
from lagoon.infer.protocol import (GenerationRequest, RequestError, chat_logprobs, completion_logprobs, parse_chat,
                                   parse_completion, usage)
from lagoon.infer.request import Completion, Update
from lagoon.infer.state import ServerState

log = logging.getLogger("lagoon.serve")


class PolicyVersionHeader:
    """ASGI middleware: add ``X-Policy-Version`` to every HTTP response (streaming ones included)."""

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-policy-version", str(self.state.engine.policy_version).encode()))
                message = {**message, "headers": headers}
            await send(message)

        return await self.app(scope, receive, send_with_header)


def error_response(error: RequestError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


async def read_json(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(f"the request body is not valid JSON: {error}") from None


class _Run:
    """The engine requests behind one HTTP request, and the updates they stream back into the event loop."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, Update]] = asyncio.Queue()
        self.requests: list = []
        self.finished = 0

    def submit(self, prompt, params) -> None:
        index = len(self.requests)

        def on_update(_request, update: Update) -> None:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (index, update))

        try:
            self.requests.append(self.engine.submit(prompt, params, on_update))
        except ValueError as error:
            self.abort()
            raise RequestError(str(error), "prompt") from None

    async def updates(self):
        while self.finished < len(self.requests):
            index, update = await self.queue.get()
            if update.finished:
                self.finished += 1
            yield index, update

    async def wait(self) -> list[Completion]:
        async for _ in self.updates():
            pass
        return [r.completion() for r in self.requests]

    def abort(self) -> None:
        for request in self.requests:
            if not request.finished:
                self.engine.abort(request)


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _check_errors(completions: list[Completion]) -> None:
    failed = [c.error for c in completions if c.error]
    if failed:
        raise RequestError(failed[0], status=500, kind="server_error")


def create_app(state: ServerState) -> FastAPI:
    from lagoon.weights.lagoon_server import register_weight_routes

    app = FastAPI(title="lagoon", docs_url=None, redoc_url=None)
    engine, config = state.engine, state.config

    @app.exception_handler(RequestError)
    async def _request_error(_request: Request, error: RequestError):
        return error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, error: StarletteHTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return error_response(RequestError(str(error.detail), status=error.status_code, kind=kind))

    @app.exception_handler(Exception)
    async def _server_error(_request: Request, error: Exception):
        log.exception("unhandled error")
        return error_response(RequestError(f"internal error: {error}", status=500, kind="server_error"))

    def check_model(name: str | None) -> None:
        if name is not None and name != state.model_name:
            raise RequestError(f"the model '{name}' does not exist; this server serves '{state.model_name}'",
                               "model", status=404, kind="not_found_error")

    @app.get("/health")
    async def health():
        return {"status": "ok", "policy_version": engine.policy_version, **engine.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": state.model_name, "object": "model", "created": state.created, "owned_by": "lagoon",
            "max_model_len": engine.max_model_len, "policy_version": engine.policy_version}]}

    # ------------------------------------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(request: Request):
        parsed = parse_completion(await read_json(request), config.max_logprobs)
        check_model(parsed.model)
        run = _Run(engine)
        for prompt in parsed.prompts:
            for sample in range(parsed.n):
                run.submit(prompt, _choice_params(parsed, sample))
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if parsed.stream:
            return StreamingResponse(_stream_completions(run, parsed, ident, created), media_type="text/event-stream")
        done = await run.wait()
        _check_errors(done)
        choices = []
        for index, completion in enumerate(done):
            choice = {
                "index": index, "text": completion.text, "finish_reason": completion.finish_reason,
                "stop_reason": completion.stop_reason, "policy_versions": completion.policy_versions,
                "logprobs": completion_logprobs(completion.token_ids, completion.logprobs, completion.top_logprobs,
                                                completion.text_offsets, state.tokenizer)
                if parsed.want_logprobs else None}
            if parsed.return_token_ids:
                choice["token_ids"] = completion.token_ids
                choice["prompt_token_ids"] = completion.prompt_token_ids
                choice["token_policy_versions"] = completion.token_policy_versions
            if completion.routed_experts is not None:
                choice["routed_experts"] = routed_experts_record(completion.routed_experts)
            choices.append(choice)
        return {"id": ident, "object": "text_completion", "created": created, "model": state.model_name,
                "policy_version": engine.policy_version, "choices": choices,
                "usage": usage([len(r.prompt_ids) for r in run.requests[:: parsed.n]], done)}

    async def _stream_completions(run: _Run, parsed: GenerationRequest, ident: str, created: int):
        head = {"id": ident, "object": "text_completion", "created": created, "model": state.model_name}
        sent_prompt = set()
        try:
            async for index, update in run.updates():
                wants_tokens = parsed.return_token_ids or parsed.want_logprobs
                if not (update.text or update.finished or (update.token_ids and wants_tokens)):
                    continue
                request = run.requests[index]
                choice: dict[str, Any] = {
                    "index": index, "text": update.text,
                    "finish_reason": update.finish_reason if update.finished else None,
                    "logprobs": None}
                if parsed.want_logprobs:
                    choice["logprobs"] = completion_logprobs(update.token_ids, update.logprobs, update.top_logprobs,
                                                             update.text_offsets, state.tokenizer)
                if parsed.return_token_ids:
                    choice["token_ids"] = update.token_ids
                    if index not in sent_prompt:
                        choice["prompt_token_ids"] = request.prompt_ids
                        sent_prompt.add(index)
                if update.finished:
                    completion = request.completion()
                    choice["stop_reason"] = completion.stop_reason
                    choice["policy_versions"] = completion.policy_versions
                    if parsed.return_token_ids:
                        choice["token_policy_versions"] = completion.token_policy_versions
                    if completion.error:
                        yield _sse({"error": {"message": completion.error, "type": "server_error", "code": 500}})
                yield _sse({**head, "policy_version": update.policy_version, "choices": [choice]})
            if parsed.include_usage:
                done = [r.completion() for r in run.requests]
                yield _sse({**head, "policy_version": engine.policy_version, "choices": [],
                            "usage": usage([len(r.prompt_ids) for r in run.requests[:: parsed.n]], done)})
            yield _sse("[DONE]")
        finally:
            run.abort()  # the client went away (or we are done: then this does nothing)

    # ------------------------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        parsed, messages, tools, raw = parse_chat(await read_json(request), config.max_logprobs)
        check_model(parsed.model)
        if state.tokenizer is None:
            raise RequestError("this checkpoint has no tokenizer, so chat is unavailable; use /v1/completions "
                               "with token ids")
        text = render_chat(messages, tools=tools, add_generation_prompt=True, enable_thinking=parsed.enable_thinking,
                           render_assistant_messages_raw=raw)
        prompt_ids = state.tokenizer.encode(text, add_special_tokens=False)
        # Reasoning and tool-call markers are special tokens: keep them in the text so the reply can be split.
        parsed.params.skip_special_tokens = False
        if parsed.params.max_tokens == 0:
            parsed.params.max_tokens = engine.max_model_len - len(prompt_ids)
            if parsed.params.max_tokens < 1:
                raise RequestError(f"the conversation ({len(prompt_ids)} tokens) fills the context length "
                                   f"{engine.max_model_len}", "messages")
        run = _Run(engine)
        for sample in range(parsed.n):
            run.submit(prompt_ids, _choice_params(parsed, sample))
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if parsed.stream:
            return StreamingResponse(_stream_chat(run, parsed, prompt_ids, ident, created),
                                     media_type="text/event-stream")
        done = await run.wait()
        _check_errors(done)
        choices = []
        for index, completion in enumerate(done):
            reply = parse_reply(completion.text, parsed.enable_thinking, parsed.tools_enabled)
            message: dict[str, Any] = {"role": "assistant", "content": reply.content}
            if parsed.enable_thinking:
                message["reasoning_content"] = reply.reasoning_content
                message["reasoning"] = reply.reasoning_content
            if reply.tool_calls:
                message["tool_calls"] = reply.tool_calls
            finish = "tool_calls" if reply.tool_calls and completion.finish_reason == "stop" else completion.finish_reason
            choice = {"index": index, "message": message, "finish_reason": finish,
                      "stop_reason": completion.stop_reason, "policy_versions": completion.policy_versions,
                      "logprobs": chat_logprobs(completion.token_ids, completion.logprobs, completion.top_logprobs,
                                                state.tokenizer) if parsed.want_logprobs else None}
            if parsed.return_token_ids:
                choice["token_ids"] = completion.token_ids
            choices.append(choice)
        body = {"id": ident, "object": "chat.completion", "created": created, "model": state.model_name,
                "policy_version": engine.policy_version, "choices": choices,
                "usage": usage([len(prompt_ids)], done)}
        if parsed.return_token_ids:
            body["prompt_token_ids"] = prompt_ids
        return body

    async def _stream_chat(run: _Run, parsed: GenerationRequest, prompt_ids: list[int], ident: str, created: int):
        head = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": state.model_name}
        streams = [ReplyStream(parsed.enable_thinking, parsed.tools_enabled) for _ in run.requests]
        try:
            first = {**head, "policy_version": engine.policy_version,
                     "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                                 for i in range(len(run.requests))]}
            if parsed.return_token_ids:
                first["prompt_token_ids"] = prompt_ids
            yield _sse(first)
            async for index, update in run.updates():
                reasoning, content = streams[index].feed(update.text)
                delta: dict[str, Any] = {}
                finish = None
                if update.finished:
                    more_reasoning, more_content, calls = streams[index].finish()
                    reasoning, content = reasoning + more_reasoning, content + more_content
                    if calls:
                        delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
                    finish = "tool_calls" if calls and update.finish_reason == "stop" else update.finish_reason
                if reasoning:
                    delta["reasoning_content"] = reasoning
                    delta["reasoning"] = reasoning
                if content:
                    delta["content"] = content
                wants_tokens = parsed.return_token_ids or parsed.want_logprobs
                if not (delta or update.finished or (update.token_ids and wants_tokens)):
                    continue
                choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish,
                                          "logprobs": chat_logprobs(update.token_ids, update.logprobs,
                                                                    update.top_logprobs, state.tokenizer)
                                          if parsed.want_logprobs else None}
                if parsed.return_token_ids:
                    choice["token_ids"] = update.token_ids
                if update.finished:
                    completion = run.requests[index].completion()
                    choice["stop_reason"] = completion.stop_reason
                    choice["policy_versions"] = completion.policy_versions
                yield _sse({**head, "policy_version": update.policy_version, "choices": [choice]})
            if parsed.include_usage:
                done = [r.completion() for r in run.requests]
                yield _sse({**head, "policy_version": engine.policy_version, "choices": [],
                            "usage": usage([len(prompt_ids)], done)})
            yield _sse("[DONE]")
        finally:
            run.abort()

    register_weight_routes(app, state)
    app.add_middleware(PolicyVersionHeader, state=state)
    return app


def _choice_params(parsed: GenerationRequest, sample: int):
    """Choice `sample` of n: its own copy of the parameters, seed + sample when a seed is given."""
    params = replace(parsed.params, stop=list(parsed.params.stop))
    if params.seed is not None:
        params.seed += sample
    return params


def routed_experts_record(experts_TLk) -> dict[str, Any]:
    """A completion's routed experts as JSON: {"dtype", "shape": [tokens, sparse layers, k], "data": base64 of
    the raw little-endian array} (uint8 when every id fits, else uint16; `lagoon.agent.clients.RoutedExperts`)."""
    from lagoon.agent.clients import RoutedExperts

    return RoutedExperts.from_array(experts_TLk.numpy()).to_record()
