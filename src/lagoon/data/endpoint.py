"""Seed-heavy rephrasing through any OpenAI-compatible chat-completions endpoint.

Point `[[data.synthetic.generators]]` with ``backend = "endpoint"`` at Ollama (``http://localhost:11434/v1``,
model ``laguna-xs.2``), vLLM (``http://host:8000/v1``), `lagoon serve`, or a hosted API; the key, if any,
is read from the environment variable named by ``api_key_env``. Requests run `concurrency` at a time,
each retried three times with backoff; every answer is appended to a cache file as soon as it arrives,
so an interrupted build resumes without asking again. Reasoning that a model emits before ``</think>``
is dropped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lagoon.data.config import GeneratorConfig
from lagoon.errors import LagoonError


class RephraseClient:
    """Sends rewrite prompts to an OpenAI-compatible ``/chat/completions`` and caches the answers."""

    def __init__(self, config: GeneratorConfig, cache_path: Path):
        import httpx

        self.config = config
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(config.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.http = httpx.Client(base_url=config.endpoint.rstrip("/"), headers=headers, timeout=config.timeout_s)
        self.cache_path = cache_path
        self.cache: dict[str, str] = {}
        if cache_path.is_file():
            for line in cache_path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interruption
                self.cache[entry["key"]] = entry["text"]

    def _complete(self, prompt: str) -> str:
        body = {"model": self.config.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        error: Exception | None = None
        for attempt in range(3):
            try:
                response = self.http.post("/chat/completions", json=body)
                if response.status_code >= 500 or response.status_code == 429:
                    raise RuntimeError(f"HTTP {response.status_code}")
                if response.status_code >= 400:
                    raise LagoonError(f"rephrasing endpoint {self.config.endpoint} refused the request "
                                      f"(HTTP {response.status_code}): {response.text[:200]}")
                content = response.json()["choices"][0]["message"]["content"] or ""
                return content.split("</think>")[-1].strip()
            except LagoonError:
                raise
            except Exception as caught:  # connection errors, timeouts, 5xx, malformed JSON
                error = caught
                time.sleep(0.5 * 2 ** attempt)
        raise LagoonError(f"cannot get rephrasings from {self.config.endpoint} ({error}); start the server or "
                          "use backend = \"template\"")

    def rephrase_all(self, requests: list[tuple[str, str]], progress: Callable[[int], None] | None = None) -> dict[str, str]:
        """Answers for (key, prompt) pairs, from the cache or the endpoint."""
        missing = [(key, prompt) for key, prompt in requests if key not in self.cache]
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        with self.cache_path.open("a") as cache, ThreadPoolExecutor(self.config.concurrency) as pool:
            for (key, _), text in zip(missing, pool.map(lambda item: self._complete(item[1]), missing)):
                self.cache[key] = text
                cache.write(json.dumps({"key": key, "text": text}, ensure_ascii=False) + "\n")
                cache.flush()
                if progress:
                    progress(1)
        return {key: self.cache[key] for key, _ in requests}

    def close(self) -> None:
        self.http.close()
