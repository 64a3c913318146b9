"""Token-in/token-out contexts: exact token ids across turns, and the prefix property.

The conversation is rendered with Laguna's chat template and tokenized once, at the start. After that the
context only grows: each turn appends the generated ids exactly as the engine returned them, then the
observation's framing, tokenized on its own:

    …<assistant>\\n</think>  +  [generated ids … </assistant>]  +  tok("\\n<user>\\n{observation}\\n</user>\\n<assistant>\\n</think>")

The framing is whatever the chat template adds when the conversation grows by the assistant reply and the
observation (so it is right for either observation role, and for thinking mode). The *prefix property*
holds when the context then equals ``tokenize(render(conversation so far))`` token for token. It breaks when
the model's text is not what the template would render (stray whitespace around the reply, text after the
reasoning tag, invalid UTF-8) or when the model chose a non-canonical tokenization of its own text. Then the
context is replaced by the fresh render and the episode continues in a new *sample*: token sequences are
never silently re-tokenized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from lagoon.tokens import END_OF_TURN_ID, STOP_IDS


class TokenCodec(Protocol):
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


def render(messages: list[dict[str, Any]], add_generation_prompt: bool, enable_thinking: bool) -> str:
    from lagoon.infer.chat import render_chat

    return render_chat(messages, add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking)


def encode(tokenizer: TokenCodec, text: str) -> list[int]:
    # The rendered text carries its own 〈|EOS|〉 (BOS); nothing may be added.
    return list(tokenizer.encode(text, add_special_tokens=False))


@dataclass
class PrefixCheck:
    ok: bool
    reason: str | None = None
    position: int | None = None
    """First differing character (text mismatch) or token (tokenization mismatch)."""

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **({"reason": self.reason, "position": self.position} if not self.ok else {})}


class TitoContext:
    """The engine's context for one episode, grown turn by turn, with the prefix check after every turn."""

    def __init__(self, tokenizer: TokenCodec, messages: list[dict[str, Any]], enable_thinking: bool = False):
        self.tokenizer = tokenizer
        self.enable_thinking = enable_thinking
        self.messages = [dict(m) for m in messages]
        self.ids = encode(tokenizer, render(self.messages, True, enable_thinking))
        self.sample = 0
        self.pending_prompt_ids = list(self.ids)
        """Ids appended since the last generation (the whole prompt at the start of a sample)."""

    def take_prompt_ids(self) -> list[int]:
        """The ids appended since the last generation, and mark them as sent."""
        pending, self.pending_prompt_ids = self.pending_prompt_ids, []
        return pending

    def add_completion(self, token_ids: list[int]) -> str:
        """Append the generated ids verbatim; record the reply as an assistant message. Returns its text."""
        self.ids += token_ids
        body = token_ids[:-1] if token_ids and token_ids[-1] in STOP_IDS else token_ids
        text = self.tokenizer.decode(list(body), skip_special_tokens=False)
        if self.enable_thinking:
            # The generation prompt opened the reasoning; the template finds it through "<think>…</think>".
            text = "<think>" + text
        self.messages.append({"role": "assistant", "content": text})
        return text

    def add_observation(self, text: str, role: str = "user") -> PrefixCheck:
        """Append the observation's framing and check the prefix property; on a break, start a new sample."""
        self.messages.append({"role": role, "content": text})
        fresh_text = render(self.messages, True, self.enable_thinking)
        current_text = self.tokenizer.decode(self.ids, skip_special_tokens=False)
        fresh_ids = encode(self.tokenizer, fresh_text)
        if fresh_text.startswith(current_text):
            appended = encode(self.tokenizer, fresh_text[len(current_text):])
            candidate = self.ids + appended
            if candidate == fresh_ids:
                self.ids = candidate
                self.pending_prompt_ids += appended
                return PrefixCheck(True)
            position = next((i for i, (a, b) in enumerate(zip(candidate, fresh_ids)) if a != b),
                            min(len(candidate), len(fresh_ids)))
            check = PrefixCheck(False, "same text, different tokenization", position)
        else:
            position = next((i for i, (a, b) in enumerate(zip(current_text, fresh_text)) if a != b),
                            min(len(current_text), len(fresh_text)))
            check = PrefixCheck(False, "the template renders the conversation differently", position)
        self.sample += 1
        self.ids = fresh_ids
        self.pending_prompt_ids = list(fresh_ids)
        return check


def canonical_completion_ids(tokenizer: TokenCodec, messages: list[dict[str, Any]], index: int,
                             enable_thinking: bool = False) -> list[int]:
    """The ids a model must generate for assistant message `index` for the prefix property to hold:
    the template's rendering of that reply after the generation prompt, ending with ``</assistant>``."""
    prefix = render(messages[:index], True, enable_thinking)
    full = render(messages[: index + 1], False, enable_thinking)
    assert full.startswith(prefix) and full.endswith("</assistant>\n"), "the template must extend the prompt"
    ids = encode(tokenizer, full[len(prefix):-1])
    assert ids and ids[-1] == END_OF_TURN_ID
    return ids


def encode_conversation(messages: list[dict[str, Any]], tokenizer: TokenCodec,
                        enable_thinking: bool = False) -> tuple[list[int], list[int]]:
    """(input_ids, loss_mask) of a whole conversation as token-in/token-out mode builds it: the prompt up to
    the first assistant turn, each assistant turn's canonical ids (mask 1), each observation's framing (mask 0).
    Messages after the last assistant turn are not included (no generation follows them)."""
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    context = TitoContext(tokenizer, messages[:first], enable_thinking)
    ids, mask = [], []
    for index in range(first, len(messages)):
        message = messages[index]
        if message["role"] == "assistant":
            prompt = context.take_prompt_ids()
            ids += prompt
            mask += [0] * len(prompt)
            completion = canonical_completion_ids(tokenizer, messages, index, enable_thinking)
            context.add_completion(completion)
            ids += completion
            mask += [1] * len(completion)
        else:
            check = context.add_observation(message["content"], message["role"])
            assert check.ok, f"canonical transcript broke the prefix property: {check}"
    assert ids == context.ids[: len(ids)]
    return ids, mask
