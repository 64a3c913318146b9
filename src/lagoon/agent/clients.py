"""Policy clients: any OpenAI-compatible chat endpoint, and lagoon's engine in token-in/token-out mode.

- `ChatClient` sends messages to ``/v1/chat/completions`` (Ollama, OpenRouter, vLLM, SGLang, lagoon serve).
  Optional extras (``top_k``, ``chat_template_kwargs``) are sent only when set, since some providers
  reject unknown fields.
- `CompletionsClient` sends token ids to lagoon serve's ``/v1/completions`` (``prompt`` as a list of ids,
  ``return_token_ids``, ``logprobs: 1``, ``stop_token_ids``) and returns the generated ids exactly as the
  engine produced them, their sampling logprobs and the policy version(s) that produced them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from lagoon.agent.config import SamplingConfig
from lagoon.errors import LagoonError
from lagoon.tokens import STOP_IDS


class PolicyError(LagoonError):
    """The model endpoint failed or answered something unusable."""


@dataclass
class ChatReply:
    text: str
    finish_reason: str | None
    usage: dict[str, int] = field(default_factory=dict)
    reasoning: str | None = None
    latency_s: float = 0.0


@dataclass
class Generation:
    """One token-in/token-out completion, exactly as the engine returned it."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    policy_versions: list[int]
    text: str
    latency_s: float = 0.0


def _sampling_body(sampling: SamplingConfig, max_tokens: int, seed: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": max_tokens}
    if seed is not None:
        body["seed"] = seed
    return body


class ChatClient:
    """An OpenAI-compatible chat endpoint."""

    mode = "chat"

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 600.0, max_retries: int = 2):
        from openai import OpenAI

        self.base_url = base_url.rstrip("/")
        self._client = OpenAI(base_url=self.base_url, api_key=api_key or "EMPTY", timeout=timeout_s,
                              max_retries=max_retries)
        self.model = model or self._first_model()

    def _first_model(self) -> str:
        import openai

        try:
            models = [m.id for m in self._client.models.list()]
        except openai.OpenAIError as error:
            raise PolicyError(f"cannot list models at {self.base_url}: {_one_line(error)}; pass --model-name") from None
        if not models:
            raise PolicyError(f"{self.base_url} serves no models; pass --model-name")
        return models[0]

    def describe(self) -> dict[str, Any]:
        return {"kind": "openai-chat", "base_url": self.base_url, "model": self.model}

    def chat(self, messages: list[dict[str, str]], sampling: SamplingConfig, seed: int | None = None) -> ChatReply:
        import openai

        body = _sampling_body(sampling, sampling.max_tokens_per_turn, seed)
        extra: dict[str, Any] = {}
        if sampling.top_k > 0:
            extra["top_k"] = sampling.top_k
        if sampling.enable_thinking:
            extra["chat_template_kwargs"] = {"enable_thinking": True}
        started = time.perf_counter()
        try:
            response = self._client.chat.completions.create(model=self.model, messages=messages, extra_body=extra or None,
                                                            **body)
        except openai.OpenAIError as error:
            raise PolicyError(f"chat request to {self.base_url} failed: {_one_line(error)}") from None
        if not response.choices:
            raise PolicyError(f"{self.base_url} returned no choices")
        choice = response.choices[0]
        message = choice.message
        reasoning = getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None)
        usage = {}
        if response.usage is not None:
            usage = {"prompt_tokens": response.usage.prompt_tokens, "completion_tokens": response.usage.completion_tokens}
        return ChatReply(text=message.content or "", finish_reason=choice.finish_reason, usage=usage,
                         reasoning=reasoning if isinstance(reasoning, str) else None,
                         latency_s=time.perf_counter() - started)


class CompletionsClient:
    """lagoon serve's ``/v1/completions`` with token ids in and token ids out."""

    mode = "tito"

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 600.0, stop_token_ids: list[int] | None = None):
        import httpx

        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers)
        self.stop_token_ids = list(STOP_IDS if stop_token_ids is None else stop_token_ids)
        self.model = model or self._first_model()

    def _first_model(self) -> str:
        try:
            response = self._http.get(f"{self.base_url}/models")
            response.raise_for_status()
            models = [m["id"] for m in response.json().get("data", [])]
        except Exception as error:  # httpx and JSON errors alike: the endpoint is unusable
            raise PolicyError(f"cannot list models at {self.base_url}: {_one_line(error)}") from None
        if not models:
            raise PolicyError(f"{self.base_url} serves no models")
        return models[0]

    def describe(self) -> dict[str, Any]:
        return {"kind": "lagoon-completions", "base_url": self.base_url, "model": self.model,
                "stop_token_ids": self.stop_token_ids}

    def generate(self, prompt_ids: list[int], sampling: SamplingConfig, max_tokens: int,
                 seed: int | None = None) -> Generation:
        body = {"model": self.model, "prompt": list(prompt_ids), "return_token_ids": True, "logprobs": 1,
                "stop_token_ids": self.stop_token_ids, "top_k": sampling.top_k,
                **_sampling_body(sampling, max_tokens, seed)}
        started = time.perf_counter()
        try:
            response = self._http.post(f"{self.base_url}/completions", json=body)
        except Exception as error:
            raise PolicyError(f"completion request to {self.base_url} failed: {_one_line(error)}") from None
        if response.status_code != 200:
            raise PolicyError(f"{self.base_url}/completions answered {response.status_code}: {response.text[:300]}")
        data = response.json()
        try:
            choice = data["choices"][0]
            token_ids = [int(t) for t in choice["token_ids"]]
            logprobs = [float(x) for x in choice["logprobs"]["token_logprobs"]]
            echoed = choice.get("prompt_token_ids")
            versions = choice.get("policy_versions")
            if versions is None:
                version = data.get("policy_version", response.headers.get("X-Policy-Version"))
                versions = [] if version is None else [int(version)]
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise PolicyError(f"{self.base_url}/completions returned no token ids/logprobs ({error!r}); "
                              "token-in/token-out mode needs lagoon serve") from None
        if echoed is not None and list(echoed) != list(prompt_ids):
            raise PolicyError("the engine reports different prompt ids than were sent")
        if len(logprobs) != len(token_ids):
            raise PolicyError(f"{len(token_ids)} token ids but {len(logprobs)} logprobs")
        return Generation(token_ids=token_ids, logprobs=logprobs, finish_reason=choice.get("finish_reason") or "stop",
                          policy_versions=[int(v) for v in versions], text=choice.get("text", ""),
                          latency_s=time.perf_counter() - started)

    def close(self) -> None:
        self._http.close()


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
