"""Shared fixtures: one quick embedded shard set per test session (built for real, in seconds)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def quick_shards_dir(tmp_path_factory) -> Path:
    """A finished quick build of the embedded corpus (do not modify; copy it first)."""
    from lagoon.data.build import build, embedded_config

    return build(embedded_config(quick=True), tmp_path_factory.mktemp("quick") / "shards", quiet=True)


@pytest.fixture()
def shards_copy(quick_shards_dir, tmp_path) -> Path:
    """A private copy of the quick shard set that a test may corrupt."""
    return Path(shutil.copytree(quick_shards_dir, tmp_path / "shards"))


class CliResult:
    """What `lagoon.cli.main` returned and printed (in-process: no interpreter start-up per call)."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture()
def lagoon_cli(capsys):
    """Run the real `lagoon` command line in this process: ``lagoon_cli("data", "stats", DIR)``."""
    from lagoon.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run
