"""Fixtures for the inference tests: a small tokenizer and tiny Laguna checkpoints on disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lagoon.model import LagunaForCausalLM, preset_config, save_pretrained

VOCAB = 640


def build_tokenizer(directory: Path, vocab_size: int = VOCAB) -> Path:
    """lagoon's own tokenizer (`lagoon.data.tokenizer`) trained on Python's bundled docs, with Laguna's template."""
    import pydoc_data.topics

    from lagoon.data.tokenizer import save_tokenizer, train_tokenizer

    text = "\n\n".join(pydoc_data.topics.topics.values())[:200_000]
    tokenizer = train_tokenizer([text], vocab_size=vocab_size)
    assert tokenizer.get_vocab_size() == vocab_size
    return save_tokenizer(tokenizer, directory, model_max_length=4096)


def tiny_model(vocab_size: int = VOCAB, seed: int = 0, scale: float = 0.1, **overrides) -> LagunaForCausalLM:
    """A tiny Laguna whose weights are spread enough that its next-token choices are not near-ties."""
    config = preset_config("tiny", vocab_size=vocab_size, **overrides)
    torch.manual_seed(seed)
    model = LagunaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
            elif not name.endswith("bias"):
                param.normal_(0, scale)
    return model.eval()


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matmuls on a shared 2-core machine run far faster on one thread than on two.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, tokenizer_dir) -> Path:
    """A tiny Laguna checkpoint (sliding window 16) with the tokenizer files beside it."""
    directory = tmp_path_factory.mktemp("ckpt") / "tiny-laguna"
    save_pretrained(tiny_model(sliding_window=16), directory, tokenizer_dir=tokenizer_dir)
    return directory


class Server:
    """A real ``lagoon serve`` process on a free port."""

    def __init__(self, checkpoint: Path, *args: str, timeout: float = 120):
        import os
        import subprocess
        import sys
        import tempfile

        from tests.conftest import ROOT

        self.log = tempfile.TemporaryFile("w+")
        command = [sys.executable, "-m", "lagoon", "serve", str(checkpoint), "--port", "0", "--threads", "1", *args]
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = self.process.stdout.readline()
        if "http://" not in line:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"lagoon serve did not start: {line}{self.logs()}")
        self.url = line.strip().rsplit(" ", 1)[-1]
        self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("lagoon serve never became healthy")

    def client(self):
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", max_retries=0, timeout=120)

    def logs(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> str:
        """Stop the server; return what it wrote to stderr."""
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except Exception:
            self.process.kill()
            self.process.wait()
        return self.logs()
