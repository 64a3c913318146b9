"""lagoon's tokenizer: byte-level BPE trained with Hugging Face tokenizers, saved in the transformers layout.

- Ids 0–31 are exactly `lagoon.tokens.SPECIAL_TOKENS` (〈|EOS|〉 = 2 is also BOS, <pad> = 9, <unk> = 0;
  the chat and agent tags <system>, <user>, <assistant>, <tool_call>, … are single tokens). Tokens marked
  special there are dropped by ``decode(skip_special_tokens=True)``; the turn tags are not.
- Pre-tokenization splits words, punctuation runs and whitespace with a GPT-4-style pattern, but every
  digit is its own piece (as in LLaMA), which makes arithmetic learnable for small vocabularies; then the
  GPT-2 byte-to-unicode map makes every byte string encodable, so ``decode(encode(text)) == text``.
- `save_tokenizer` writes ``tokenizer.json``, ``tokenizer_config.json`` (with `lagoon.tokens.chat_template()`
  and the bos/eos/pad/unk tokens), ``special_tokens_map.json`` and ``token_bytes.npy``, so
  ``transformers.AutoTokenizer.from_pretrained(dir)`` gives a fast tokenizer whose ``apply_chat_template``
  works.

Token bytes (for bits per byte): ``token_bytes[i]`` is the number of UTF-8 bytes token ``i`` contributes to
``decode(ids, skip_special_tokens=True)``: 0 for special tokens, the tag's length for the turn tags, the
length of its byte string for BPE tokens. For any text without special-token strings in it,
``token_bytes[encode(text)].sum() == len(text.encode("utf-8"))``.

The tokenizer hash (`tokenizer_hash`) is ``sha256:`` + the SHA-256 of ``tokenizer.json``; shard manifests
record it and loaders refuse shards made with another tokenizer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lagoon.errors import LagoonError
from lagoon.tokens import EOS, EOS_ID, PAD, SPECIAL_TOKENS, UNK, chat_template

# GPT-4's split pattern (cl100k) with single digits instead of runs of up to three.
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|"""
                 r"""\s*[\r\n]|\s+(?!\S)|\s+""")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "token_bytes.npy")


def _empty_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2):
    """Train a byte-level BPE `tokenizers.Tokenizer` on `texts`, with lagoon's special tokens at ids 0–31.

    Small corpora may yield fewer than `vocab_size` tokens; the tokenizer then simply has fewer ids.
    """
    from tokenizers import Tokenizer, pre_tokenizers, trainers

    if vocab_size <= 256 + len(SPECIAL_TOKENS):
        raise LagoonError(f"vocab_size {vocab_size} leaves no room for merges (needs > {256 + len(SPECIAL_TOKENS)})")
    tokenizer = _empty_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=[text for text, _ in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # The trainer marks every added token special; the turn tags must survive decoding, so fix the flags.
    data = json.loads(tokenizer.to_str())
    for entry in data["added_tokens"]:
        assert SPECIAL_TOKENS[entry["id"]][0] == entry["content"], "special tokens must sit at their fixed ids"
        entry["special"] = SPECIAL_TOKENS[entry["id"]][1]
        entry["normalized"] = False
    return Tokenizer.from_str(json.dumps(data, ensure_ascii=False))


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes→unicode map that byte-level BPE tokens are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codepoints = list(printable)
    shift = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codepoints.append(256 + shift)
            shift += 1
    return {chr(codepoint): byte for byte, codepoint in zip(printable, codepoints)}


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id contributes to ``decode(..., skip_special_tokens=True)`` (int32[V])."""
    decoder = _byte_decoder()
    lengths = np.zeros(tokenizer.get_vocab_size(), dtype=np.int32)
    added = {token.content: token.special for token in tokenizer.get_added_tokens_decoder().values()}
    for token, index in tokenizer.get_vocab().items():
        if token in added:
            lengths[index] = 0 if added[token] else len(token.encode("utf-8"))
        else:
            lengths[index] = sum(1 for ch in token if ch in decoder)
    return lengths


def save_tokenizer(tokenizer, directory: str | Path, model_max_length: int = 131072) -> Path:
    """Write the tokenizer in the transformers layout (see the module docstring)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    special = {"bos_token": EOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "chat_template": chat_template(),
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "add_bos_token": False,
        "add_eos_token": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2, ensure_ascii=False) + "\n")
    np.save(directory / "token_bytes.npy", token_byte_lengths(tokenizer))
    return directory


def load_tokenizer(directory: str | Path):
    """The `tokenizers.Tokenizer` saved in `directory` (or the ``tokenizer.json`` path itself)."""
    from tokenizers import Tokenizer

    path = Path(directory)
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.is_file():
        raise LagoonError(f"no tokenizer at {path}")
    return Tokenizer.from_file(str(path))


def tokenizer_hash(directory: str | Path) -> str:
    """``sha256:<hex>`` of the directory's ``tokenizer.json``."""
    path = Path(directory)
    path = path / "tokenizer.json" if path.is_dir() else path
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def encode_documents(tokenizer, texts: list[str], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of `texts` concatenated, each document led by 〈|EOS|〉; and the length of each document.

    One batched encode (Rust, all cores unless RAYON_NUM_THREADS says otherwise) plus one pass to
    flatten; the flatten is the only cost on top of calling tokenizers directly.
    """
    encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    lengths = np.fromiter((len(encoding.ids) + 1 for encoding in encodings), dtype=np.int64, count=len(texts))
    flat = itertools.chain.from_iterable(itertools.chain((EOS_ID,), encoding.ids) for encoding in encodings)
    ids = np.fromiter(flat, dtype=dtype, count=int(lengths.sum()))
    return ids, lengths
