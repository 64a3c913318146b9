"""One generation request as the engine tracks it: tokens, logprobs, text, stop conditions, streaming deltas.

A request's token ids are the ground truth: `token_ids` holds every generated id (the stop token
included when one ended generation) with its log-probability and the policy version that produced it.
Text is derived from the ids by an incremental detokenizer; stop strings cut the text, never the ids
that were already sampled.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from lagoon.infer.sampling import SamplingParams
from lagoon.infer.tokenizer import IncrementalDetokenizer, TextCodec

FinishReason = Literal["stop", "length", "abort"]
_ids = itertools.count()


@dataclass
class Completion:
    """A finished generation (what `Engine.generate` returns)."""

    token_ids: list[int]
    """Generated ids; ends with the stop token when one ended generation."""
    logprobs: list[float]
    """Log-probability of each generated id (see `lagoon.infer.sampling` for the distribution)."""
    text: str
    """Decoded text (stop strings and stop tokens removed unless asked to keep them)."""
    finish_reason: FinishReason
    prompt_token_ids: list[int]
    policy_versions: list[int]
    """Distinct policy versions that generated these tokens, in order of use."""
    token_policy_versions: list[int]
    """The policy version of each generated token."""
    top_logprobs: list[list[tuple[int, float]]] | None = None
    """Per step, the requested number of (id, logprob) alternatives, most likely first."""
    text_offsets: list[int] = field(default_factory=list)
    """Character offset in `text` where each generated token's text starts."""
    stop_reason: int | str | None = None
    """The stop token id or stop string that ended generation, if any."""
    error: str | None = None
    """Set when the engine failed while running this request (it then finishes with "abort")."""
    routed_experts: torch.Tensor | None = None
    """[prompt + generated − 1, sparse layers, k] expert ids each MoE layer chose for every token the engine
    ran (the last sampled token never ran), when `SamplingParams.return_routed_experts` asked for them."""


@dataclass
class Update:
    """What one engine step added to a request (the unit of streaming)."""

    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]] | None
    text: str
    """New text that is safe to show (held back while it could still become part of a stop string)."""
    text_offsets: list[int]
    policy_version: int
    finished: bool
    finish_reason: FinishReason | None


class Request:
    """Engine-side state of one sequence. Created by `Engine.submit`; read it after `done` is set."""

    def __init__(self, prompt_ids: list[int], params: SamplingParams, tokenizer: TextCodec | None,
                 device: torch.device, on_update: Callable[["Request", Update], None] | None = None,
                 request_id: str | None = None):
        self.id = request_id or f"req-{next(_ids)}"
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.generator = params.make_generator(device)
        self.on_update = on_update
        self.stop_ids = params.stop_ids
        self.output_ids: list[int] = []
        self.output_logprobs: list[float] = []
        self.output_top: list[list[tuple[int, float]]] | None = [] if params.logprobs else None
        self.versions: list[int] = []
        self.text = ""
        self.text_offsets: list[int] = []
        self.detokenizer = IncrementalDetokenizer(tokenizer, params.skip_special_tokens) if tokenizer else None
        self.max_stop_len = max((len(s) for s in params.stop), default=0)
        self.emitted_chars = 0
        self.emitted_tokens = 0
        self.finish_reason: FinishReason | None = None
        self.stop_reason: int | str | None = None
        self.error: str | None = None
        self.abort_requested = False
        self.done = threading.Event()
        self.row: int | None = None
        self.experts: list[torch.Tensor] = []
        """Per engine step, [positions, sparse layers, k] experts of the positions it ran (when asked)."""

    # ------------------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def sequence_length(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def sequence(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    def accept(self, token: int, logprob: float, top: list[tuple[int, float]] | None, version: int) -> None:
        """Record one sampled token and apply the stop conditions."""
        assert not self.finished
        self.output_ids.append(token)
        self.output_logprobs.append(logprob)
        self.versions.append(version)
        if self.output_top is not None:
            self.output_top.append(top or [])
        self.text_offsets.append(len(self.text))
        if token in self.stop_ids:
            if self.params.include_stop_str_in_output and self.detokenizer is not None:
                self.text += self.detokenizer.tokenizer.decode([token], skip_special_tokens=False)
            self._finish("stop", token)
            return
        if self.detokenizer is not None:
            previous = len(self.text)
            self.text += self.detokenizer.add(token)
            if self.params.stop and self._cut_at_stop_string(previous):
                return
        if len(self.output_ids) >= self.params.max_tokens:
            self._finish("length")

    def _cut_at_stop_string(self, previous: int) -> bool:
        start = max(0, previous - self.max_stop_len + 1)
        found = [(self.text.find(stop, start), stop) for stop in self.params.stop]
        found = [(index, stop) for index, stop in found if index >= 0]
        if not found:
            return False
        index, stop = min(found)
        self.text = self.text[: index + (len(stop) if self.params.include_stop_str_in_output else 0)]
        self._finish("stop", stop)
        return True

    def _finish(self, reason: FinishReason, stop_reason: int | str | None = None) -> None:
        if self.detokenizer is not None and not isinstance(stop_reason, str):
            self.text += self.detokenizer.flush()  # a stop string already cut the text; anything else keeps it all
        self.finish_reason = reason
        self.stop_reason = stop_reason

    def finish_abort(self, error: str | None = None) -> None:
        if not self.finished:
            self._finish("abort")
            self.error = error

    # ------------------------------------------------------------------------------------------------
    def take_update(self) -> Update:
        """Everything produced since the last update (text held back while a stop string could still match)."""
        end = len(self.text)
        if not self.finished and self.max_stop_len:
            end = max(self.emitted_chars, end - (self.max_stop_len - 1))
        tokens = slice(self.emitted_tokens, len(self.output_ids))
        update = Update(
            token_ids=self.output_ids[tokens], logprobs=self.output_logprobs[tokens],
            top_logprobs=self.output_top[tokens] if self.output_top is not None else None,
            text=self.text[self.emitted_chars:end], text_offsets=self.text_offsets[tokens],
            policy_version=self.versions[-1] if self.versions else -1,
            finished=self.finished, finish_reason=self.finish_reason)
        self.emitted_chars = max(self.emitted_chars, end)
        self.emitted_tokens = len(self.output_ids)
        return update

    def publish(self) -> None:
        """Send the pending update to the listener; mark the request done when it has finished."""
        if self.on_update is not None:
            self.on_update(self, self.take_update())
        if self.finished:
            self.done.set()

    def completion(self) -> Completion:
        assert self.finished
        distinct = list(dict.fromkeys(self.versions))
        return Completion(
            token_ids=list(self.output_ids), logprobs=list(self.output_logprobs), text=self.text,
            finish_reason=self.finish_reason, prompt_token_ids=list(self.prompt_ids), policy_versions=distinct,
            token_policy_versions=list(self.versions), top_logprobs=self.output_top,
            text_offsets=list(self.text_offsets), stop_reason=self.stop_reason, error=self.error,
            routed_experts=torch.cat(self.experts) if self.experts else None)
