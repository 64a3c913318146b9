"""Synthetic generators: pipeline-heavy code exercises, template rephrasing, and an OpenAI-compatible endpoint."""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lagoon.data.build import build
from lagoon.data.config import DataConfig, GeneratorConfig
from lagoon.data.embedded import stdlib_root
from lagoon.data.endpoint import RephraseClient
from lagoon.data.shards import ShardSet
from lagoon.data.sources import Document
from lagoon.data.synthetic import code_exercises, extract_functions, template_rephrase
from lagoon.errors import LagoonError


def test_code_exercises_recompose_extracted_features():
    source = (stdlib_root() / "textwrap.py").read_text()
    features = extract_functions(source)
    names = {f["name"] for f in features}
    assert {"dedent", "indent", "shorten"} <= names
    dedent = next(f for f in features if f["name"] == "dedent")
    assert dedent["signature"] == "def dedent(text):"
    documents = code_exercises(Document("stdlib:textwrap.py", source, "s", "code", {"path": "textwrap.py"}), "synth_code")
    text = "\n".join(d.text for d in documents)
    assert documents and all(d.domain == "synth_code" and d.metadata["seed"] == "stdlib:textwrap.py" for d in documents)
    assert "Exercise: implement" in text or "Question: what does this function do?" in text
    assert documents == code_exercises(Document("stdlib:textwrap.py", source, "s", "code", {"path": "textwrap.py"}), "synth_code")


def test_doctests_become_pytest_functions():
    source = 'def double(x):\n    """Twice x, for any number.\n\n    >>> double(2)\n    4\n    """\n    return 2 * x\n'
    (feature,) = extract_functions(source)
    assert feature["doctests"] == [("double(2)", "4")]
    from lagoon.data.synthetic import _tests

    assert "def test_double_1():\n    assert double(2) == 4" in _tests(feature, random.Random(0))


def test_template_rephrasing_in_three_shapes():
    import pydoc_data.topics

    seed = Document("pydoc:exceptions", pydoc_data.topics.topics["exceptions"], "s", "docs", {"topic": "exceptions"})
    rng = random.Random(0)
    assert template_rephrase(seed, "qa", rng).count("\nA: ") >= 2
    assert template_rephrase(seed, "list", rng).count("\n- ") >= 2
    dialogue = template_rephrase(seed, "dialogue", rng)
    assert "<user>\n" in dialogue and "<assistant>\n" in dialogue


class _Server:
    """A real OpenAI-compatible HTTP endpoint (the shape Ollama and vLLM expose) that rewrites as Q&A."""

    def __init__(self, fail_first: int = 0):
        self.requests, self.fail_first = [], fail_first
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((self.path, body, self.headers.get("Authorization")))
                if len(server.requests) <= server.fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                document = body["messages"][0]["content"].split("---\n")[1]
                words = document.split()
                answer = f"<think>planning</think>Q: What is this about?\nA: {' '.join(words[:40])}\n\nQ: And then?\nA: {' '.join(words[40:])}"
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.mark.timeout(60)
def test_endpoint_client_retries_caches_and_strips_reasoning(tmp_path, monkeypatch):
    server = _Server(fail_first=1)
    monkeypatch.setenv("LAGOON_TEST_KEY", "secret")
    try:
        config = GeneratorConfig(kind="rephrase", backend="endpoint", endpoint=server.url, model="laguna-xs.2",
                                 api_key_env="LAGOON_TEST_KEY", concurrency=2)
        client = RephraseClient(config, tmp_path / "cache.jsonl")
        prompts = [(f"k{i}", f"Rewrite.\n\n---\nword{i} " * 30 + "\n---") for i in range(4)]
        answers = client.rephrase_all(prompts)
        client.close()
        assert all(a.startswith("Q: What is this about?") and "planning" not in a for a in answers.values())
        path, body, auth = server.requests[-1]
        assert path == "/v1/chat/completions" and body["model"] == "laguna-xs.2" and auth == "Bearer secret"
        seen = len(server.requests)
        again = RephraseClient(config, tmp_path / "cache.jsonl")
        assert again.rephrase_all(prompts) == answers and len(server.requests) == seen  # served from the cache
        again.close()
    finally:
        server.close()
    dead = RephraseClient(GeneratorConfig(kind="rephrase", backend="endpoint", endpoint="http://127.0.0.1:9/v1",
                                          timeout_s=1), tmp_path / "dead.jsonl")
    with pytest.raises(LagoonError, match="cannot get rephrasings from http://127.0.0.1:9/v1"):
        dead.rephrase_all([("a", "prompt")])


@pytest.mark.timeout(120)
def test_build_from_jsonl_with_endpoint_rephrasing_and_the_learned_classifier(tmp_path):
    import pydoc_data.topics

    records = [{"id": name, "text": text} for name, text in sorted(pydoc_data.topics.topics.items()) if len(text) > 2000]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    server = _Server()
    try:
        config = DataConfig(
            sources=[{"kind": "jsonl", "path": str(tmp_path / "docs.jsonl"), "domain": "docs"}],
            domains={"docs": {"group": "stem", "quality": "prose"}, "chat": {"group": "general", "quality": "structured"}},
            synthetic={"generators": [{"kind": "rephrase", "domain": "chat", "seed_domains": ["docs"], "share": 0.1,
                                       "backend": "endpoint", "endpoint": server.url, "concurrency": 4}]},
            curation={"classifier": {"enabled": True, "reference_domains": ["docs"], "weight": 0.3}},
            tokenizer={"vocab_size": 512, "sample_bytes": 100_000}, build={"workers": 1})
        from lagoon.configio import from_dict, to_dict

        config = from_dict(DataConfig, to_dict(config), "data")
        out = build(config, tmp_path / "shards", quiet=True)
    finally:
        server.close()
    shards = ShardSet.open(out)
    assert any(leaf.startswith("chat/") for leaf in shards.leaves) and "general" in shards.groups
    report = shards.manifest["stats"]["synthetic"]["chat"]
    assert report["produced_bytes"] >= report["target_bytes"] > 0
    assert 0 < len(server.requests) < report["seeds"]  # stopped once the share was met
    synthetic = sum(t for leaf, t in shards.leaf_tokens.items() if leaf.startswith("chat/"))
    assert 0.02 < synthetic / sum(shards.leaf_tokens.values()) < 0.3
