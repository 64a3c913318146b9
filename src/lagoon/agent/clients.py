"""Policy clients: any OpenAI-compatible chat endpoint, and lagoon's engine in token-in/token-out mode.

- `ChatClient` sends messages to ``/v1/chat/completions`` (Ollama, OpenRouter, vLLM, SGLang, lagoon serve).
  Optional extras (``top_k``, ``chat_template_kwargs``) are sent only when set, since some providers
  reject unknown fields.
- `CompletionsClient` sends token ids to lagoon serve's ``/v1/completions`` (``prompt`` as a list of ids,
  ``return_token_ids``, ``logprobs: 1``, ``stop_token_ids``) and returns the generated ids exactly as the
  engine produced them, their sampling logprobs and the policy version of every token.
- `VLLMClient` does the same against stock vLLM's token-in/token-out ``/inference/v1/generate``
  (``--enable-scale-out``): token ids in; token ids, logprobs and ``weight_versions`` (spans of output tokens
  per weight version) out, plus the routed experts when the server returns them.

Token-in/token-out RL needs to know which weights drew every token: a server that reports no policy version
(or a version that is not an integer) is a `PolicyError`, never a silent −1.
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
    """The policy version that sampled each token (one entry per token)."""
    text: str
    latency_s: float = 0.0
    routed_experts: "RoutedExperts | None" = None
    """The experts every MoE layer chose for each token the engine ran (prompt and completion, all but the
    last sampled token), when the server returns them."""


@dataclass
class RoutedExperts:
    """Expert ids per token, sparse layer and slot: ``data`` is the raw little-endian bytes of a
    [tokens, layers, k] array of ``dtype`` (uint8 for ≤ 256 experts, uint16 above)."""

    dtype: str
    shape: list[int]
    data: bytes

    def to_record(self) -> dict[str, Any]:
        import base64

        return {"dtype": self.dtype, "shape": list(self.shape), "data": base64.b64encode(self.data).decode()}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "RoutedExperts":
        import base64

        return cls(record["dtype"], list(record["shape"]), base64.b64decode(record["data"]))

    @classmethod
    def from_array(cls, array) -> "RoutedExperts":
        import numpy as np

        array = np.ascontiguousarray(array)
        dtype = "uint8" if int(array.max(initial=0)) < 256 and array.dtype.kind in "iu" else "uint16"
        array = array.astype(dtype, copy=False)
        return cls(dtype, list(array.shape), array.astype(array.dtype.newbyteorder("<")).tobytes())

    def array(self):
        import numpy as np

        return np.frombuffer(self.data, dtype=np.dtype(self.dtype).newbyteorder("<")).reshape(self.shape)


def token_versions(versions: Any, count: int, source: str) -> list[int]:
    """One integer policy version per token from what a server reported; `PolicyError` if it reported none."""
    if versions is None or (isinstance(versions, list) and not versions and count):
        raise PolicyError(f"{source} reported no policy version for its tokens; token-in/token-out RL needs one")
    try:
        versions = [int(v) for v in (versions if isinstance(versions, list) else [versions])]
    except (TypeError, ValueError):
        raise PolicyError(f"{source} reported policy version(s) {versions!r}, not integers") from None
    if len(versions) == 1 and count != 1:
        versions = versions * count
    if len(versions) != count:
        raise PolicyError(f"{source} reported {len(versions)} policy versions for {count} tokens")
    return versions


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
                 timeout_s: float = 600.0, stop_token_ids: list[int] | None = None, return_routed_experts: bool = False):
        import httpx

        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers)
        self.stop_token_ids = list(STOP_IDS if stop_token_ids is None else stop_token_ids)
        self.return_routed_experts = return_routed_experts
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
                "return_routed_experts": self.return_routed_experts,
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
            # Per token: a weight update may land in the middle of a completion.
            versions = choice.get("token_policy_versions")
            experts = choice.get("routed_experts")
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise PolicyError(f"{self.base_url}/completions returned no token ids/logprobs ({error!r}); "
                              "token-in/token-out mode needs lagoon serve") from None
        if echoed is not None and list(echoed) != list(prompt_ids):
            raise PolicyError("the engine reports different prompt ids than were sent")
        if len(logprobs) != len(token_ids):
            raise PolicyError(f"{len(token_ids)} token ids but {len(logprobs)} logprobs")
        versions = token_versions(versions, len(token_ids), f"{self.base_url}/completions")
        return Generation(token_ids=token_ids, logprobs=logprobs, finish_reason=choice.get("finish_reason") or "stop",
                          policy_versions=versions, text=choice.get("text", ""),
                          latency_s=time.perf_counter() - started,
                          routed_experts=RoutedExperts.from_record(experts) if experts else None)

    def close(self) -> None:
        self._http.close()


class VLLMClient:
    """Stock vLLM's token-in/token-out ``/inference/v1/generate`` (``--enable-scale-out``), as `CompletionsClient`."""

    mode = "tito"

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 600.0, stop_token_ids: list[int] | None = None):
        import httpx

        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers)
        self.stop_token_ids = list(STOP_IDS if stop_token_ids is None else stop_token_ids)
        self.model = model

    def describe(self) -> dict[str, Any]:
        return {"kind": "vllm-generate", "base_url": self.base_url, "model": self.model,
                "stop_token_ids": self.stop_token_ids}

    def generate(self, prompt_ids: list[int], sampling: SamplingConfig, max_tokens: int,
                 seed: int | None = None) -> Generation:
        params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": sampling.temperature,
                                  "top_p": sampling.top_p, "top_k": sampling.top_k, "logprobs": 0,
                                  "stop_token_ids": self.stop_token_ids, "detokenize": False}
        if seed is not None:
            params["seed"] = seed
        body = {"token_ids": list(prompt_ids), "sampling_params": params,
                **({"model": self.model} if self.model else {})}
        source = f"{self.base_url}/inference/v1/generate"
        started = time.perf_counter()
        try:
            response = self._http.post(source, json=body)
        except Exception as error:
            raise PolicyError(f"generate request to {self.base_url} failed: {_one_line(error)}") from None
        if response.status_code != 200:
            raise PolicyError(f"{source} answered {response.status_code}: {response.text[:300]}")
        try:
            choice = response.json()["choices"][0]
            token_ids = [int(t) for t in choice["token_ids"]]
            logprobs = [float(entry["logprob"]) for entry in (choice.get("logprobs") or {}).get("content") or []]
            spans = choice.get("weight_versions")
            experts = choice.get("routed_experts")
        except (KeyError, IndexError, TypeError, ValueError) as error:
            raise PolicyError(f"{source} returned no token ids/logprobs ({error!r})") from None
        if len(logprobs) != len(token_ids):
            raise PolicyError(f"{len(token_ids)} token ids but {len(logprobs)} logprobs from {source}")
        versions = None
        if spans:
            versions = [None] * len(token_ids)
            for span in spans:
                for index in range(int(span["start"]), min(int(span["end"]), len(token_ids))):
                    versions[index] = span["version"]
            if any(v is None for v in versions):
                versions = None
        versions = token_versions(versions, len(token_ids), source)
        return Generation(token_ids=token_ids, logprobs=logprobs, finish_reason=choice.get("finish_reason") or "stop",
                          policy_versions=versions, text="", latency_s=time.perf_counter() - started,
                          routed_experts=_numpy_experts(experts) if experts else None)

    def close(self) -> None:
        self._http.close()


def _numpy_experts(encoded: str) -> RoutedExperts:
    """vLLM's routed experts: base64 of a ``.npy`` file, [tokens, layers, k]."""
    import base64
    import io

    import numpy as np

    return RoutedExperts.from_array(np.load(io.BytesIO(base64.b64decode(encoded)), allow_pickle=False))


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
