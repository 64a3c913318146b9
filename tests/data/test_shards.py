"""The built shard set: manifest contents, held-out separation, and every refusal ShardSet.open makes."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from lagoon.data import ShardSet
from lagoon.errors import LagoonError
from lagoon.tokens import EOS_ID
from tests.conftest import assert_one_line_error


def test_manifest_describes_every_leaf_and_eval_set(quick_shards_dir):
    shards = ShardSet.open(quick_shards_dir)
    manifest = shards.manifest
    assert shards.leaves == sorted(shards.leaves) and all("/q" in leaf for leaf in shards.leaves)
    assert set(shards.groups) == {"code", "math", "stem", "general"}
    assert sorted(leaf for leaves in shards.groups.values() for leaf in leaves) == sorted(shards.leaves)
    assert shards.tokenizer_hash.startswith("sha256:") and shards.vocab_size == 4096
    assert shards.token_bytes.shape == (4096,)
    # Buckets cover every training document exactly once: the leaves hold all of them, per domain.
    for domain, entry in manifest["stats"]["bucket"].items():
        in_leaves = sum(e["num_documents"] for e in manifest["leaves"].values() if e["domain"] == domain)
        assert in_leaves == entry["kept"] and entry["kept"] + entry["dropped"].get("held_out", 0) == entry["documents_in"]
    natural = shards.natural_mixture()
    assert sum(natural.weights.values()) == pytest.approx(1.0)
    for leaf in shards.leaves:
        entry = manifest["leaves"][leaf]
        stream = shards.leaf_stream(leaf)
        assert stream.num_tokens == entry["num_tokens"] == shards.leaf_tokens[leaf] > 0
        assert len(stream.starts) == entry["num_documents"]
        assert entry["raw_bytes"] > 0 and entry["group"] in shards.groups
        # Every document starts with EOS and nowhere else has one.
        tokens = stream.gather(np.arange(stream.num_tokens))
        assert np.array_equal(np.flatnonzero(tokens == EOS_ID), stream.starts)
        for shard in entry["shards"]:
            assert set(shard["tokens"]) == {"path", "bytes", "sha256"}


def test_held_out_documents_never_appear_in_training_shards(quick_shards_dir):
    shards = ShardSet.open(quick_shards_dir)

    def digests(stream):
        return {hashlib.sha1(stream.document(i).tobytes()).hexdigest() for i in range(len(stream.starts))}

    training = set().union(*(digests(shards.leaf_stream(leaf)) for leaf in shards.leaves))
    for group in shards.eval_groups:
        held = shards.eval_set(group)
        assert held.num_documents > 0 and not digests(held.stream) & training


def test_eval_batches_predict_every_token_once_and_define_the_bytes(quick_shards_dir):
    shards = ShardSet.open(quick_shards_dir)
    held = shards.eval_set("math")
    targets = np.concatenate([b.targets.numpy().ravel() for b in held.batches(seq_len=64, batch_size=4)])
    predicted = targets[targets != -100]
    assert len(predicted) == held.num_tokens - 1
    assert np.array_equal(predicted, held.token_ids[1:])
    assert int(shards.token_bytes[predicted].sum()) == held.num_bytes == held.raw_bytes  # plain text: equal


def test_tokenizer_mismatch_is_refused(shards_copy):
    with pytest.raises(LagoonError, match="not the expected tokenizer"):
        ShardSet.open(shards_copy, expected_tokenizer_hash="sha256:" + "0" * 64)
    tokenizer_file = shards_copy / "tokenizer" / "tokenizer.json"
    data = json.loads(tokenizer_file.read_text())
    data["model"]["vocab"]["zzz-new-token"] = len(data["model"]["vocab"])
    tokenizer_file.write_text(json.dumps(data))
    with pytest.raises(LagoonError, match="is not the tokenizer the shards were made with"):
        ShardSet.open(shards_copy)


def test_a_leaf_from_another_tokenizer_is_refused(shards_copy):
    manifest = json.loads((shards_copy / "manifest.json").read_text())
    leaf = next(iter(manifest["leaves"]))
    assert manifest["leaves"][leaf]["tokenizer_hash"] == manifest["tokenizer"]["hash"]
    manifest["leaves"][leaf]["tokenizer_hash"] = "sha256:" + "1" * 64
    (shards_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(LagoonError, match=f"{leaf} was tokenized with sha256:1111"):
        ShardSet.open(shards_copy)


def test_truncated_and_corrupted_shards_are_refused_naming_the_file(shards_copy, lagoon_cli):
    shards = ShardSet.open(shards_copy)
    leaf = shards.leaves[0]
    token_file = shards_copy / shards.manifest["leaves"][leaf]["shards"][0]["tokens"]["path"]
    data = bytearray(token_file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    token_file.write_bytes(bytes(data))
    corrupted = ShardSet.open(shards_copy)  # sizes match: opening succeeds
    with pytest.raises(LagoonError, match=f"shard file {token_file} fails its SHA-256 checksum"):
        corrupted.leaf_stream(leaf)
    assert_one_line_error(lagoon_cli("data", "stats", str(shards_copy), "--verify"), str(token_file), "checksum")
    token_file.write_bytes(bytes(data[:-10]))
    with pytest.raises(LagoonError, match=f"shard file {token_file} is truncated or altered"):
        ShardSet.open(shards_copy)
    assert_one_line_error(lagoon_cli("data", "stats", str(shards_copy)), str(token_file), "truncated")


def test_unfinished_build_is_not_a_shard_set(shards_copy):
    (shards_copy / "manifest.json").unlink()
    with pytest.raises(LagoonError, match="no manifest.json.*did not finish"):
        ShardSet.open(shards_copy)


def test_stats_and_sample_commands(quick_shards_dir, lagoon_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    stats = lagoon_cli("data", "stats", str(quick_shards_dir), "--json")
    summary = json.loads(stats.stdout)
    assert set(summary["leaves"]) == set(ShardSet.open(quick_shards_dir).leaves)
    table = lagoon_cli("data", "stats", str(quick_shards_dir))
    assert "code/q1" in table.stdout and "held-out" in table.stdout and "dedup" in table.stdout
    sample = lagoon_cli("data", "sample", str(quick_shards_dir), "tool_use/q1", "-n", "2")
    assert sample.stdout.count("── tool_use/q1 document") == 2 and "<user>" in sample.stdout
    held = lagoon_cli("data", "sample", str(quick_shards_dir), "eval:math")
    assert "eval:math" in held.stdout
    assert_one_line_error(lagoon_cli("data", "sample", str(quick_shards_dir), "web/q9"), "unknown leaf 'web/q9'")


def test_leaves_split_over_several_shard_files_read_back_exactly(tmp_path):
    from lagoon.data.loader import _Leaf
    from lagoon.data.shards import ShardWriter

    rng = np.random.default_rng(0)
    documents = [np.r_[EOS_ID, rng.integers(32, 4096, rng.integers(5, 120))].astype(np.uint16) for _ in range(60)]
    writer = ShardWriter(tmp_path, "leaves/x/q1", np.dtype(np.uint16), shard_tokens=500)
    for start in range(0, 60, 7):
        batch = documents[start:start + 7]
        writer.write(np.concatenate(batch), np.array([len(d) for d in batch]))
    shards_written = writer.finish()
    assert len(shards_written) > 3 and all(s["num_tokens"] <= 500 + 7 * 120 for s in shards_written)
    shard_set = ShardSet(tmp_path, {"token_dtype": "uint16"})
    stream = shard_set._stream("leaf:x/q1", {"shards": shards_written})
    assert [stream.document(i).tolist() for i in range(60)] == [d.tolist() for d in documents]
    leaf = _Leaf("x/q1", stream, seq_len=40, seed=0)
    windows = np.arange(0, 3 * leaf.windows_per_epoch, 7)
    fast, reference = leaf.read(windows), leaf.read_reference(windows)
    assert np.array_equal(fast[0], reference[0]) and np.array_equal(fast[1], reference[1])
