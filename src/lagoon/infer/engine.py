"""The generation engine: continuous batching over a KV cache, exact sampling logprobs, live weight updates.

    from lagoon.infer import Engine, SamplingParams
    engine = Engine.from_checkpoint("runs/x/checkpoints/step_00001000")
    [done] = engine.generate("def fib(n):", SamplingParams(max_tokens=64, temperature=0.8, seed=1))
    done.token_ids, done.logprobs, done.text, done.finish_reason

Shape legend: B running rows, T positions, D model width, V vocabulary.

Scheduling: each step first admits waiting requests into free rows (one batched prefill of their
prompts, at most `max_prefill_tokens` padded tokens; the first token is sampled from the prefill),
then runs one decode step over every running row. Requests therefore join and leave the batch between
decode steps (continuous batching). Finished rows are compacted so the batch stays contiguous.

Weight updates: `pause("keep")` parks the engine between steps with running requests intact;
`pause("abort")` ends every accepted request with finish_reason "abort" and the tokens it has so far.
While paused, new requests queue. After the weights change, `resume()` re-prefills every kept request
(prompt + tokens so far) under the new weights, so every later token — and its logprob — comes from the
new policy alone. The policy version of each token is recorded.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import torch

from lagoon.errors import LagoonError
from lagoon.infer.cache import KVCache
from lagoon.infer.request import Completion, Request, Update
from lagoon.infer.sampling import SamplingParams, sample
from lagoon.infer.tokenizer import TextCodec, Tokenizer, load_tokenizer
from lagoon.model.transformer import LagunaForCausalLM
from lagoon.tokens import PAD_ID

log = logging.getLogger("lagoon.infer")

Prompt = str | list[int]


class Engine:
    """Batched generation for one `LagunaForCausalLM`; thread-safe `submit`, one driver thread for steps."""

    def __init__(self, model: LagunaForCausalLM, tokenizer: TextCodec | str | Path | None = None, *,
                 max_batch: int = 32, max_model_len: int | None = None, max_prefill_tokens: int = 8192,
                 policy_version: int = 0):
        if isinstance(tokenizer, (str, Path)):
            tokenizer = Tokenizer.from_dir(tokenizer)
        elif tokenizer is not None and not hasattr(tokenizer, "token_text") and hasattr(tokenizer, "get_vocab_size"):
            tokenizer = Tokenizer(tokenizer)  # a bare `tokenizers.Tokenizer`
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.max_batch = max_batch
        longest = self.config.max_position_embeddings
        self.max_model_len = min(max_model_len or longest, longest)
        self.max_prefill_tokens = max_prefill_tokens
        self.policy_version = policy_version
        self.cache = KVCache(self.config, max_batch, self.max_model_len, self.dtype, self.device)

        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._reprefill: list[Request] = []
        self._running: list[Request] = []          # row i of the cache belongs to _running[i]
        self._driver = threading.Lock()            # held by whoever runs `step`
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._pause_request: str | None = None
        self.paused = False
        self._held = False                         # paused by `pause` (not just around a weight update)
        self._weights_changed = False
        self.weights_complete = True               # False after a transfer failed halfway
        self._admitted: list[Request] = []         # taken from the queue, not yet running (during a prefill)
        self.steps = 0
        # Routed experts, for requests that ask (routing replay): each sparse layer's router reports its choice.
        self._routes: list[torch.Tensor] | None = None
        from lagoon.model.routing import routers

        for router in routers(self.model):
            router.register_forward_hook(self._record_route)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, dtype: torch.dtype | str = "auto", device: str = "cpu",
                        **kwargs) -> "Engine":
        """Load a checkpoint directory (lagoon or Hugging Face Laguna) and its tokenizer, if it has one."""
        from lagoon.model.hf import from_pretrained

        model = from_pretrained(path, device=device, dtype=dtype)
        return cls(model, load_tokenizer(path), **kwargs)

    # ------------------------------------------------------------------------------------------------
    # Requests

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt given as text (encoded with the tokenizer's special-token rules) or as ids."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer; send the prompt as token ids")
            ids = self.tokenizer.encode(prompt, add_special_tokens=True)
        else:
            ids = list(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
        vocab = self.config.vocab_size
        if any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < vocab for i in ids):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        return ids

    def submit(self, prompt: Prompt, params: SamplingParams | None = None,
               on_update: Callable[[Request, Update], None] | None = None, request_id: str | None = None) -> Request:
        """Queue one request; raises ValueError for a bad prompt or parameters. Thread-safe."""
        params = params or SamplingParams()
        params.validate()
        ids = self.encode_prompt(prompt)
        if len(ids) + params.max_tokens > self.max_model_len:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the context "
                             f"length {self.max_model_len}")
        request = Request(ids, params, self.tokenizer, self.device, on_update, request_id)
        with self._cond:
            self._waiting.append(request)
            self._cond.notify_all()
        return request

    def abort(self, request: Request) -> None:
        """Stop a request at the next step (e.g. its client went away); it finishes with "abort"."""
        with self._cond:
            request.abort_requested = True
            if request in self._waiting:
                self._waiting.remove(request)
                request.finish_abort()
                request.publish()
            self._cond.notify_all()

    def generate(self, prompts: Prompt | Iterable[Prompt], params: SamplingParams | list[SamplingParams] | None = None
                 ) -> list[Completion]:
        """Generate for one prompt or a list of prompts (text or token ids); blocks until all finish."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if not isinstance(params, list):
            params = [params or SamplingParams()] * len(prompts)
        requests = [self.submit(p, sp) for p, sp in zip(prompts, params, strict=True)]
        if self._thread is not None:
            for request in requests:
                request.done.wait()
        else:
            while not all(r.finished for r in requests):
                if not self.step() and self.paused:
                    raise LagoonError("the engine is paused; resume it before generating")
        return [r.completion() for r in requests]

    # ------------------------------------------------------------------------------------------------
    # The background loop (the server runs one; in-process callers may instead let `generate` drive).

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="lagoon-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _has_work(self) -> bool:
        return bool(self._running or self._reprefill or self._waiting)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and self._pause_request is None and (self.paused or not self._has_work()):
                    self._cond.wait()
                if self._stopping:
                    return
                if self._pause_request is not None:
                    self._apply_pause()
                    continue
            try:
                self.step()
            except Exception as error:  # keep serving: fail the requests in flight, not the server
                log.error("engine step failed:\n%s", traceback.format_exc())
                self._fail_running(f"engine error: {error}")

    # ------------------------------------------------------------------------------------------------
    # Pause, weight updates, resume

    def pause(self, mode: Literal["keep", "abort"] = "keep") -> None:
        """Park the engine between steps until `resume`. "abort" ends every request accepted so far with
        finish_reason "abort" and the tokens it has."""
        if mode not in ("keep", "abort"):
            raise ValueError(f"pause mode must be 'keep' or 'abort', got {mode!r}")
        self._held = True  # a weight update in progress will not resume on its own now
        self._pause(mode)

    def _pause(self, mode: str) -> None:
        if self._thread is None:
            with self._driver, self._cond:  # same lock order as `step`
                self._pause_request = mode
                self._apply_pause()
            return
        with self._cond:
            self._pause_request = mode
            self._cond.notify_all()
            while self._pause_request is not None:
                self._cond.wait()

    def _apply_pause(self) -> None:
        """With the lock held and no step running: park, aborting if asked."""
        mode, self._pause_request = self._pause_request, None
        if mode == "abort":
            aborted = self._running + self._reprefill + list(self._waiting)
            self._running, self._reprefill = [], []
            self._waiting.clear()
            for request in aborted:
                request.finish_abort()
                request.publish()
        self.paused = True
        self._cond.notify_all()

    def resume(self) -> None:
        """Continue; kept requests are re-prefilled first if the weights changed while paused."""
        self._held = False
        self._resume()

    def _resume(self) -> None:
        with self._cond:
            if not self.weights_complete:
                raise LagoonError("the last weight transfer failed halfway; load complete weights before resuming")
            if self._weights_changed:
                self._reprefill = self._running + self._reprefill
                self._running = []
                self._weights_changed = False
            self.paused = False
            self._cond.notify_all()

    def update_weights(self, apply: Callable[[LagunaForCausalLM], None], version: int) -> None:
        """Run `apply(model)` while paused (pausing with "keep" around it if the engine is running)."""
        auto = not self.paused
        if auto:
            self._pause("keep")
        try:
            with self._driver, torch.no_grad():
                self.weights_complete = False
                apply(self.model)
                self.weights_complete = True
                self._weights_changed = True
                self.policy_version = version
        finally:
            if auto and self.weights_complete and not self._held:
                self._resume()

    def load_state_dict(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Copy a full runtime-named state dict into the served model (shapes checked before anything changes)."""
        check_state_matches(self.model, state)

        def apply(model: LagunaForCausalLM) -> None:
            for name, tensor in model.state_dict().items():
                if name in state:
                    tensor.copy_(state[name])

        self.update_weights(apply, version)

    def _record_route(self, module, args, output) -> None:
        if self._routes is not None:
            self._routes.append(output[2].detach())

    def _routed(self, requests: list[Request], rows_BT: tuple[int, int]) -> torch.Tensor | None:
        """The step's experts as [B, T, L, k] (CPU, int16), or None if no request asked."""
        routes, self._routes = self._routes, None
        if not routes:
            return None
        return torch.stack(routes).view(len(routes), *rows_BT, -1).permute(1, 2, 0, 3).to("cpu", torch.int16)

    # ------------------------------------------------------------------------------------------------
    # One scheduling step

    def step(self) -> bool:
        """Admit, prefill and decode once. Returns False when there was nothing to do."""
        with self._driver:
            with self._cond:
                if self.paused:
                    return False
                admitted = self._admit()
            self._drop_aborted()
            if admitted:
                self._admitted = admitted
                self._prefill(admitted)
                self._admitted = []
            if self._running:
                self._decode()
            self.steps += 1
            return bool(admitted or self._running)

    def _admit(self) -> list[Request]:
        admitted: list[Request] = []
        budget = self.max_prefill_tokens
        longest = 0
        while len(self._running) + len(admitted) < self.max_batch and (self._reprefill or self._waiting):
            request = self._reprefill[0] if self._reprefill else self._waiting[0]
            if request.abort_requested:
                (self._reprefill.pop(0) if self._reprefill else self._waiting.popleft())
                request.finish_abort()
                request.publish()
                continue
            longest_after = max(longest, request.sequence_length())
            if admitted and longest_after * (len(admitted) + 1) > budget:
                break
            (self._reprefill.pop(0) if self._reprefill else self._waiting.popleft())
            admitted.append(request)
            longest = longest_after
        return admitted

    def _drop_aborted(self) -> None:
        if any(r.abort_requested for r in self._running):
            for request in self._running:
                if request.abort_requested:
                    request.finish_abort()
            self._retire_finished()

    @torch.no_grad()
    def _prefill(self, requests: list[Request]) -> None:
        first_row = len(self._running)
        rows = list(range(first_row, first_row + len(requests)))
        sequences = [r.sequence() for r in requests]
        lengths = [len(s) for s in sequences]
        input_ids_BT = torch.full((len(requests), max(lengths)), PAD_ID, dtype=torch.long)
        for b, sequence in enumerate(sequences):
            input_ids_BT[b, : len(sequence)] = torch.tensor(sequence)
        input_ids_BT = input_ids_BT.to(self.device)
        position_ids_BT = torch.arange(input_ids_BT.shape[1], device=self.device).expand_as(input_ids_BT)
        self.cache.begin_prefill(rows, lengths)
        self._routes = [] if any(r.params.return_routed_experts for r in requests) else None
        try:
            hidden_BTD = self.model(input_ids_BT, position_ids=position_ids_BT, cache=self.cache,
                                    return_logits=False, return_hidden_states=True).hidden_states
        finally:
            self.cache.end_step()
        experts_BTLk = self._routed(requests, tuple(input_ids_BT.shape))
        for b, request in enumerate(requests):
            if experts_BTLk is not None and request.params.return_routed_experts:
                request.experts = [experts_BTLk[b, : lengths[b]]]   # a re-prefill replaces every position
        last_B = torch.tensor(lengths, device=self.device) - 1
        last_BD = hidden_BTD[torch.arange(len(requests), device=self.device), last_B]
        for row, request in zip(rows, requests):
            request.row = row
            self._running.append(request)
        self._sample_and_accept(requests, self.model.lm_head(last_BD))

    @torch.no_grad()
    def _decode(self) -> None:
        running = list(self._running)
        positions = [r.sequence_length() - 1 for r in running]
        input_ids_B1 = torch.tensor([[r.output_ids[-1]] for r in running], device=self.device)
        position_ids_B1 = torch.tensor(positions, device=self.device)[:, None]
        self.cache.begin_decode(positions)
        self._routes = [] if any(r.params.return_routed_experts for r in running) else None
        try:
            logits_B1V = self.model(input_ids_B1, position_ids=position_ids_B1, cache=self.cache).logits
        finally:
            self.cache.end_step()
        experts_BTLk = self._routed(running, tuple(input_ids_B1.shape))
        for b, request in enumerate(running):
            if experts_BTLk is not None and request.params.return_routed_experts:
                request.experts.append(experts_BTLk[b])
        self._sample_and_accept(running, logits_B1V[:, 0])

    def _sample_and_accept(self, requests: list[Request], logits_BV: torch.Tensor) -> None:
        result = sample(logits_BV, [r.params for r in requests], [r.generator for r in requests])
        tokens = result.tokens_B.tolist()
        logprobs = result.logprobs_B.tolist()
        top_ids = result.top_ids_Bn.tolist() if result.top_ids_Bn is not None else None
        top_values = result.top_logprobs_Bn.tolist() if result.top_logprobs_Bn is not None else None
        for b, request in enumerate(requests):
            top = None
            if request.params.logprobs and top_ids is not None:
                count = request.params.logprobs
                top = list(zip(top_ids[b][:count], top_values[b][:count]))
            request.accept(tokens[b], logprobs[b], top, self.policy_version)
        self._retire_finished()
        for request in requests:
            try:
                request.publish()
            except Exception:  # a listener's failure must not stop the batch
                log.error("request listener failed:\n%s", traceback.format_exc())

    def _retire_finished(self) -> None:
        """Remove finished rows, moving the last running row into each freed row."""
        row = 0
        while row < len(self._running):
            if self._running[row].finished:
                last = len(self._running) - 1
                self.cache.move_row(last, row)
                self._running[row] = self._running[last]
                self._running[row].row = row
                self._running.pop()
            else:
                row += 1

    def _fail_running(self, message: str) -> None:
        with self._cond:
            failed = list(dict.fromkeys(self._running + self._admitted))
            self._running, self._admitted = [], []
        for request in failed:
            request.finish_abort(message)
            request.publish()

    # ------------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, int | bool]:
        with self._cond:
            return {"running": len(self._running) + len(self._reprefill), "waiting": len(self._waiting),
                    "paused": self.paused, "steps": self.steps, "policy_version": self.policy_version}


def check_state_matches(model: LagunaForCausalLM, state: dict[str, torch.Tensor]) -> None:
    """Raise LagoonError unless `state` has exactly the model's tensors with the same shapes."""
    expected = model.state_dict()
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise LagoonError(f"new weights do not match the served model: {detail}")
    for name, tensor in expected.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise LagoonError(f"new weights do not match the served model: {name} has shape "
                              f"{tuple(state[name].shape)}, expected {tuple(tensor.shape)}")
