"""Shared test helpers: run the real `lagoon` CLI in a subprocess and small model configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Tiny tensors on 2 cores shared by several processes per test (ranks, servers, actors): one OpenMP thread per
# process, inherited by every subprocess a test starts, avoids oversubscribing the cores (tests/optim ran
# 1.4-1.7x faster in wall time with it, at load 5-10). Set before torch is imported, so torch starts with it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_lagoon(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None,
               check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m lagoon ARGS`` and capture its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    result = subprocess.run([sys.executable, "-m", "lagoon", *args], cwd=cwd or ROOT, env=full_env,
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"lagoon {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> None:
    """The CLI failed with exit `code` and a single-line message (no traceback) containing `fragments`."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
