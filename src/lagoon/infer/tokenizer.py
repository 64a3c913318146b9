"""The serving side of a checkpoint's tokenizer: text ↔ ids, the chat template, incremental detokenization.

A checkpoint directory carries ``tokenizer.json`` (Hugging Face `tokenizers`) and ``tokenizer_config.json``
(whose ``chat_template`` is Laguna's, or ``chat_template.jinja`` next to it). The engine needs only
`encode`, `decode` and `token_text`; anything with those methods can stand in for `Tokenizer`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from lagoon.errors import LagoonError

REPLACEMENT_CHAR = "\ufffd"


class TextCodec(Protocol):
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...

    def token_text(self, token_id: int) -> str: ...


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the chat template and special-token set from ``tokenizer_config.json``."""

    def __init__(self, backend: Any, chat_template: str | None = None):
        self.backend = backend
        self.chat_template = chat_template
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_dir(cls, directory: str | Path) -> "Tokenizer":
        from tokenizers import Tokenizer as Backend

        directory = Path(directory)
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise LagoonError(f"{directory} has no tokenizer.json")
        try:
            backend = Backend.from_file(str(path))
        except Exception as error:  # the tokenizers library raises bare Exceptions for bad files
            raise LagoonError(f"cannot read {path}: {error}") from None
        template = None
        config_path = directory / "tokenizer_config.json"
        if config_path.is_file():
            try:
                template = json.loads(config_path.read_text()).get("chat_template")
            except json.JSONDecodeError as error:
                raise LagoonError(f"{config_path} is not valid JSON: {error}") from None
        if (directory / "chat_template.jinja").is_file():
            template = (directory / "chat_template.jinja").read_text()
        return cls(backend, template if isinstance(template, str) else None)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """The token as text for logprob listings (its decoded bytes; the raw vocab entry if it decodes to nothing)."""
        text = self.backend.decode([token_id], skip_special_tokens=False)
        if text and REPLACEMENT_CHAR not in text:
            return text
        return self.backend.id_to_token(token_id) or f"<id:{token_id}>"


def load_tokenizer(directory: str | Path) -> Tokenizer | None:
    """The checkpoint's tokenizer, or None when the directory has none (the engine then serves token ids only)."""
    if not (Path(directory) / "tokenizer.json").is_file():
        return None
    return Tokenizer.from_dir(directory)


class IncrementalDetokenizer:
    """Turn a growing list of token ids into text deltas without re-decoding everything each step.

    Byte-level BPE can split one character over several tokens; a decode that ends in U+FFFD is
    incomplete, so its text is held back until the character completes. `offsets[i]` is the character
    offset in `text` where token i's text starts (OpenAI's ``text_offset``).
    """

    def __init__(self, tokenizer: TextCodec, skip_special_tokens: bool):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""
        self.offsets: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def add(self, token_id: int) -> str:
        """Append one token; return the newly complete text (possibly empty)."""
        self.offsets.append(len(self.text))
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=self.skip_special_tokens)
        full = decode(self.ids[self.prefix_offset:], skip_special_tokens=self.skip_special_tokens)
        if full.endswith(REPLACEMENT_CHAR) or len(full) < len(prefix):
            return ""
        delta = full[len(prefix):]
        self.text += delta
        # The last complete chunk stays as context for the next decode (metaspace decoders need it for spaces).
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        return delta

    def flush(self) -> str:
        """At the end of generation: whatever is still held back (with replacement characters if truly invalid)."""
        if self.read_offset == len(self.ids):
            return ""
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=self.skip_special_tokens)
        full = decode(self.ids[self.prefix_offset:], skip_special_tokens=self.skip_special_tokens)
        delta = full[len(prefix):]
        self.text += delta
        self.read_offset = len(self.ids)
        return delta
