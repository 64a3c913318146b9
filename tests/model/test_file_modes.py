"""Exported model directories and their files get the modes the user's umask asks for (not mkdtemp's 0700 and
safetensors' 0600): a serving account or a colleague can read what `lagoon export hf` wrote under umask 022."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch

from lagoon.model import LagunaForCausalLM, preset_config, save_pretrained
from tests.conftest import ROOT


def _modes(directory) -> dict[str, int]:
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in [directory, *directory.iterdir()]}


@pytest.mark.parametrize("umask, directory_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_exported_files_follow_the_umask(tmp_path, umask, directory_mode, file_mode):
    torch.manual_seed(0)
    save_pretrained(LagunaForCausalLM(preset_config("tiny", num_hidden_layers=1, hidden_size=64, head_dim=16,
                                                     vocab_size=256)), tmp_path / "src")
    # The CLI in a process of its own, under the umask a user's shell would give it.
    result = subprocess.run([sys.executable, "-m", "lagoon", "export", "hf", str(tmp_path / "src"), str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(umask))
    assert result.returncode == 0, result.stderr
    modes = _modes(tmp_path / "out")
    assert modes.pop("out") == directory_mode
    assert "model.safetensors" in modes and set(modes.values()) == {file_mode}, {k: oct(v) for k, v in modes.items()}


def test_save_pretrained_in_process_follows_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        path = save_pretrained(LagunaForCausalLM(preset_config("tiny", num_hidden_layers=1, hidden_size=64,
                                                               head_dim=16, vocab_size=256)), tmp_path / "m")
    finally:
        os.umask(previous)
    modes = _modes(path)
    assert modes.pop("m") == 0o755 and set(modes.values()) == {0o644}, {k: oct(v) for k, v in modes.items()}
