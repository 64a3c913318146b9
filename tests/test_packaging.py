"""The repository stands alone: every package the code and the tests import is declared in pyproject.toml, the
lower bounds admit only versions with the APIs lagoon calls, and every document the code cites exists."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OWN = {"lagoon", "tests", "benchmarks"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _declared(*extras: str) -> set[str]:
    project = PYPROJECT["project"]
    names = {_name(r) for r in project["dependencies"]}
    for extra in extras:
        names |= {_name(r) for r in project["optional-dependencies"][extra]}
    return names


def _imports(root: Path) -> dict[str, Path]:
    """Top-level module → one file importing it, for every import under `root`."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        if "tasksets" in path.parts:   # the agent's task workspaces: code for the sandbox, not lagoon's
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path)
    return found


def _undeclared(root: Path, declared: set[str]) -> dict[str, str]:
    distributions = packages_distributions()
    missing = {}
    for module, path in _imports(root).items():
        if module in sys.stdlib_module_names or module in OWN or module.startswith("_"):
            continue
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not names & declared:
            missing[module] = f"{sorted(names)} imported by {path.relative_to(ROOT)}"
    return missing


def test_every_package_the_tests_import_is_declared():
    assert _undeclared(ROOT / "tests", _declared("test")) == {}


def test_every_package_lagoon_imports_is_declared():
    extras = tuple(PYPROJECT["project"]["optional-dependencies"])
    assert _undeclared(ROOT / "src" / "lagoon", _declared(*extras)) == {}


def test_datasketch_lower_bound_has_the_minhash_scheme_lagoon_passes():
    # lagoon.data.dedup passes MinHash(scheme="affine32"); datasketch 1.x has no `scheme` (it appears in 2.0.0).
    (spec,) = [r for r in PYPROJECT["project"]["dependencies"] if _name(r) == "datasketch"]
    lower = re.search(r">=\s*([\d.]+)", spec).group(1)
    assert tuple(int(x) for x in lower.split(".")) >= (2, 0), spec
    from datasketch import MinHash

    MinHash(num_perm=16, scheme="affine32")


def test_every_document_the_code_and_docs_cite_exists():
    cited = {}
    sources = [*(ROOT / "src").rglob("*.py"), *(ROOT / "docs").glob("*.md"), ROOT / "README.md",
               *(ROOT / "configs").rglob("*.toml"), *(ROOT / "benchmarks").glob("*.py")]
    for path in sources:
        for name in re.findall(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b", path.read_text()):
            cited.setdefault(name, path)
    in_repo = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.md") if ".git" not in p.parts]
    missing = {name: str(path.relative_to(ROOT)) for name, path in cited.items()
               if not any(f == name or f.endswith("/" + name) for f in in_repo)}
    assert missing == {}
