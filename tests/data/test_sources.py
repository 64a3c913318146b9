"""Readers on real files of each format, and the embedded corpora."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from lagoon.data.config import SourceConfig
from lagoon.data.sources import read_source
from lagoon.errors import LagoonError

RECORDS = [{"id": f"r{i}", "text": f"Document number {i} says something.", "lang": "en", "domain": "web"} for i in range(5)]


def _lines(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_plain_gzip_and_zstd(tmp_path, suffix):
    path = tmp_path / f"part{suffix}"
    data = _lines(RECORDS)
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else
                     zstandard.ZstdCompressor().compress(data) if suffix.endswith(".zst") else data)
    documents = read_source(SourceConfig(kind="jsonl", path=str(path), domain="web", name="crawl"))
    assert [d.id for d in documents] == [f"crawl:r{i}" for i in range(5)]
    assert documents[3].text == RECORDS[3]["text"]
    assert documents[0].source == "crawl" and documents[0].domain == "web"
    assert documents[0].metadata == {"lang": "en", "domain": "web"}


def test_jsonl_folder_domain_field_and_limits(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(_lines(RECORDS[:3]))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(_lines(RECORDS[3:])))
    documents = read_source(SourceConfig(kind="jsonl", path=str(tmp_path), domain_field="domain"))
    assert len(documents) == 5 and {d.domain for d in documents} == {"web"}
    assert len(read_source(SourceConfig(kind="jsonl", path=str(tmp_path), domain="web", max_documents=2))) == 2


def test_jsonl_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n{not json\n")
    with pytest.raises(LagoonError, match=r"bad.jsonl:2: not valid JSON"):
        read_source(SourceConfig(kind="jsonl", path=str(path), domain="web"))
    path.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(LagoonError, match="field 'text' is missing"):
        read_source(SourceConfig(kind="jsonl", path=str(path), domain="web"))
    with pytest.raises(LagoonError, match="matches no files"):
        read_source(SourceConfig(kind="jsonl", path=str(tmp_path / "none*.jsonl"), domain="web"))


def test_parquet(tmp_path):
    table = pa.table({"uid": [r["id"] for r in RECORDS], "content": [r["text"] for r in RECORDS],
                      "score": [0.5] * 5})
    pq.write_table(table, tmp_path / "data.parquet")
    documents = read_source(SourceConfig(kind="parquet", path=str(tmp_path / "*.parquet"), domain="web",
                                         text_field="content", id_field="uid"))
    assert [d.text for d in documents] == [r["text"] for r in RECORDS]
    assert documents[2].id.endswith(":r2") and documents[2].metadata == {"score": 0.5}
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(LagoonError, match="broken.parquet: not a readable Parquet file"):
        read_source(SourceConfig(kind="parquet", path=str(tmp_path / "broken.parquet"), domain="web"))


def test_text_folder(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("def f():\n    return 1\n")
    (tmp_path / "README.md").write_text("# Title\n\nSome prose.\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    documents = read_source(SourceConfig(kind="text", path=str(tmp_path), domain="code"))
    assert sorted(d.metadata["path"] for d in documents) == ["README.md", "pkg/mod.py"]
    assert next(d for d in documents if d.metadata["path"] == "pkg/mod.py").text.startswith("def f")


def test_embedded_corpora_are_deterministic_and_typed():
    for name, domain in (("stdlib_code", "code"), ("stdlib_docs", "docs"), ("math", "math"), ("tool_use", "tool_use")):
        source = SourceConfig(kind="embedded", embedded=name, domain=domain, max_documents=200)
        first, again = read_source(source, scale=0.02), read_source(source, scale=0.02)
        assert first and [(d.id, d.text) for d in first] == [(d.id, d.text) for d in again]
        assert all(d.domain == domain and d.text for d in first)
    code = read_source(SourceConfig(kind="embedded", embedded="stdlib_code", domain="code"), scale=0.02)
    compile(code[0].text, code[0].id, "exec")  # real Python source


def test_tool_use_answers_come_from_running_the_program():
    import re

    from lagoon.data.embedded_tools import run_program

    source = SourceConfig(kind="embedded", embedded="tool_use", domain="tool_use", max_documents=40)
    for document in read_source(source, scale=0.25):
        programs = re.findall(r"```python\n(.*?)\n```", document.text, re.DOTALL)
        answers = re.findall(r"^ANSWER: (.*)$", document.text, re.MULTILINE)
        assert programs and [run_program(p) for p in programs] == answers


def test_tool_use_follows_the_agent_harness_conventions():
    import random

    agent_actions = pytest.importorskip("lagoon.agent.actions")
    from lagoon.data.embedded_tools import conversation

    for seed in range(20):
        messages = conversation(random.Random(seed))
        assert messages[0]["role"] == "system"
        replies = [agent_actions.parse_reply(m["content"]) for m in messages if m["role"] == "assistant"]
        assert [r.kind for r in replies] == ["code", "submit"] * (len(replies) // 2)
        assert all(r.language == "python" for r in replies[::2])
