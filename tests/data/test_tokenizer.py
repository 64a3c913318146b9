"""The tokenizer: fixed special ids, round trips, token bytes, transformers loading and the chat template."""

from __future__ import annotations

import warnings

import numpy as np
import pydoc_data.topics
import pytest

from lagoon.data.chat import render_chat
from lagoon.data.tokenizer import (encode_documents, load_tokenizer, save_tokenizer, token_dtype, tokenizer_hash,
                                   train_tokenizer)
from lagoon.tokens import EOS_ID, PAD_ID, SPECIAL_TOKENS, chat_template

TEXTS = [
    "def f(x: int) -> int:\n    return x ** 2  # square\n\n\tindented\ttabs\r\nwindows line",
    "Unicode: héllo wörld, 日本語のテキスト, emoji 🙂👍🏽, math ∑ x² ≤ ∞",
    "Numbers 1234567890 and 3.14159, -42, 0x1F",
    "  leading and trailing spaces  ",
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    corpus = list(pydoc_data.topics.topics.values()) + TEXTS * 3
    tokenizer = train_tokenizer(corpus, vocab_size=1024)
    return save_tokenizer(tokenizer, tmp_path_factory.mktemp("tok") / "tokenizer")


def test_special_tokens_sit_at_their_fixed_ids(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    assert tokenizer.get_vocab_size() == 1024
    for index, (text, special) in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(text) == index
        assert tokenizer.encode(text).ids == [index]
    assert tokenizer.token_to_id("〈|EOS|〉") == EOS_ID == 2


def test_round_trip_and_token_bytes(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    token_bytes = np.load(tokenizer_dir / "token_bytes.npy")
    assert token_bytes.shape == (1024,) and token_bytes[EOS_ID] == 0 and token_bytes[PAD_ID] == 0
    assert token_bytes[3] == len("<system>")  # turn tags are text that decoding keeps
    for text in TEXTS + list(pydoc_data.topics.topics.values())[:5]:
        ids = tokenizer.encode(text).ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
        assert int(token_bytes[ids].sum()) == len(text.encode("utf-8"))


def test_batch_encoding_matches_one_document_at_a_time(tokenizer_dir):
    tokenizer = load_tokenizer(tokenizer_dir)
    ids, lengths = encode_documents(tokenizer, TEXTS, token_dtype(1024))
    expected = [[EOS_ID, *tokenizer.encode(text, add_special_tokens=False).ids] for text in TEXTS]
    assert lengths.tolist() == [len(e) for e in expected]
    assert ids.tolist() == [i for e in expected for i in e]
    assert ids.dtype == np.uint16


def test_training_is_deterministic(tokenizer_dir):
    again = save_tokenizer(train_tokenizer(list(pydoc_data.topics.topics.values()) + TEXTS * 3, vocab_size=1024),
                           tokenizer_dir.parent / "again")
    assert tokenizer_hash(again) == tokenizer_hash(tokenizer_dir)


def test_transformers_loads_a_fast_tokenizer_with_the_chat_template(tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    assert hf.is_fast
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (2, 2, 9, 0)
    ours = load_tokenizer(tokenizer_dir)
    for text in TEXTS:
        assert hf(text, add_special_tokens=True)["input_ids"] == ours.encode(text).ids
        assert hf.decode(ours.encode(text).ids) == text
    messages = [{"role": "user", "content": "What is 6 × 7?"},
                {"role": "assistant", "content": "```python\nprint(6 * 7)\n```"},
                {"role": "tool", "content": "42"}, {"role": "assistant", "content": "42."}]
    rendered = hf.apply_chat_template(messages, tokenize=False)
    assert rendered == render_chat(messages, with_eos=True)
    assert hf.chat_template == chat_template()
    ids = hf.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == EOS_ID and 5 in ids and 7 in ids  # <user> and <tool_response> are single tokens
