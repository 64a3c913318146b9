"""The embedded default corpus: built from what every Python installation carries, no download needed.

- ``stdlib_code``: the standard library's own source files (tests, site-packages and the pydoc topic table
  excluded), one document per file.
- ``stdlib_docs``: technical prose: every ``pydoc_data`` topic (the language reference pages ``help()``
  shows), plus one reference page per standard-library module built from its module, class and function
  docstrings (read with `ast`, so nothing is imported or executed).
- ``math``: generated worksheets of arithmetic, fractions, percentages, algebra, number theory and word
  problems with worked answers, in several formats (`lagoon.data.embedded_math`).
- ``tool_use``: generated conversations in which each question is answered by writing a short Python
  program, running it and reading its output (`lagoon.data.embedded_tools`).

`scale` < 1 (the quick build) keeps a deterministic subset: a hash-selected share of the files, and that
share of the generated documents.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from lagoon.data.config import SourceConfig
from lagoon.data.sources import Document

_SKIPPED_PARTS = {"site-packages", "test", "tests", "idle_test", "__pycache__", "dist-packages"}
_SKIPPED_FILES = {"pydoc_data/topics.py"}  # the topics are docs, read by stdlib_docs


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _selected(key: str, scale: float) -> bool:
    """Deterministically keep about `scale` of all keys."""
    if scale >= 1.0:
        return True
    digest = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return digest % 10_000 < scale * 10_000


def stdlib_files(scale: float = 1.0) -> list[tuple[str, Path]]:
    """(module-relative path, file) of every standard-library source file, sorted."""
    root = stdlib_root()
    files = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if _SKIPPED_PARTS.intersection(path.relative_to(root).parts[:-1]) or relative in _SKIPPED_FILES:
            continue
        if path.name.startswith("test_") or not _selected(relative, scale):
            continue
        files.append((relative, path))
    return files


def iter_stdlib_code(source: SourceConfig, scale: float) -> Iterator[Document]:
    for relative, path in stdlib_files(scale):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        yield Document(id=f"stdlib:{relative}", text=text, source=source.label, domain=source.domain,
                       metadata={"path": relative, "language": "python"})


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"{node.name}({ast.unparse(node.args)}){returns}"


def _indent(text: str, spaces: int = 4) -> str:
    return "\n".join((" " * spaces + line) if line.strip() else "" for line in text.strip().splitlines())


def module_reference(module: str, source_text: str) -> str | None:
    """A reference page from a module's docstrings, or None when it documents too little."""
    try:
        tree = ast.parse(source_text)
    except SyntaxError:
        return None
    # pydoc's plain-text layout (no markdown '#', which Gopher's symbol rule would count against prose)
    parts = [f"{module}\n{'=' * len(module)}\n"]
    docstring = ast.get_docstring(tree)
    if docstring:
        parts.append(docstring.strip() + "\n")
    documented = 0
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            text = ast.get_docstring(node)
            if text:
                parts.append(f"{module}.{_signature(node)}\n{_indent(text)}\n")
                documented += 1
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            bases = ", ".join(ast.unparse(base) for base in node.bases)
            text = ast.get_docstring(node)
            parts.append(f"class {module}.{node.name}({bases})\n" + (f"{_indent(text)}\n" if text else ""))
            documented += bool(text)
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                    method_doc = ast.get_docstring(item)
                    if method_doc:
                        parts.append(f"    {node.name}.{_signature(item)}\n{_indent(method_doc, 8)}\n")
                        documented += 1
    if not docstring and documented < 2:
        return None
    return "\n".join(parts)


def iter_stdlib_docs(source: SourceConfig, scale: float) -> Iterator[Document]:
    import pydoc_data.topics

    for name, text in sorted(pydoc_data.topics.topics.items()):
        if _selected(f"topic:{name}", scale):
            yield Document(id=f"pydoc:{name}", text=text, source=source.label, domain=source.domain,
                           metadata={"kind": "pydoc_topic", "topic": name})
    for relative, path in stdlib_files(scale):
        module = relative[:-3].replace("/", ".").removesuffix(".__init__")
        try:
            page = module_reference(module, path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
        if page:
            yield Document(id=f"docstrings:{module}", text=page, source=source.label, domain=source.domain,
                           metadata={"kind": "module_reference", "module": module})


def iter_embedded(source: SourceConfig, scale: float = 1.0) -> Iterator[Document]:
    """Documents of one embedded corpus (see the module docstring)."""
    if source.embedded == "stdlib_code":
        return iter_stdlib_code(source, scale)
    if source.embedded == "stdlib_docs":
        return iter_stdlib_docs(source, scale)
    count = max(1, round((source.max_documents or 1000) * scale))
    if source.embedded == "math":
        from lagoon.data.embedded_math import generate_math

        return generate_math(source, count)
    assert source.embedded == "tool_use", source.embedded
    from lagoon.data.embedded_tools import generate_tool_use

    return generate_tool_use(source, count)
