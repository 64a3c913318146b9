"""Document sources: JSON lines (plain, .gz, .zst), Parquet, folders of text/code files, embedded corpora.

Every reader yields `Document`s with an id, the text, the source name, the domain and a small metadata
dict. Paths may be a file, a folder (read recursively, files sorted by path) or a glob pattern. Readers
are plain generators, so a source of any size streams; `read_source` applies the source's limits.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from lagoon.data.config import SourceConfig
from lagoon.errors import LagoonError


@dataclass
class Document:
    """One document of the corpus."""

    id: str
    text: str
    source: str
    domain: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _expand(path: str, suffixes: tuple[str, ...]) -> list[Path]:
    """Files named by `path`: the file itself, files under a folder with one of `suffixes`, or a glob."""
    target = Path(path).expanduser()
    if target.is_file():
        return [target]
    if target.is_dir():
        return sorted(p for p in target.rglob("*") if p.is_file() and p.name.endswith(suffixes))
    matches = sorted(Path(p) for p in glob.glob(str(target), recursive=True) if Path(p).is_file())
    if not matches:
        raise LagoonError(f"source path {path} matches no files")
    return matches


def _open_text(path: Path) -> io.TextIOBase:
    """Open a possibly compressed text file (by suffix: .gz, .zst)."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    if path.suffix in (".zst", ".zstd"):
        import zstandard

        stream = zstandard.ZstdDecompressor().stream_reader(path.open("rb"))
        return io.TextIOWrapper(stream, encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _record_document(record: dict[str, Any], source: SourceConfig, where: str) -> Document:
    text = record.get(source.text_field)
    if not isinstance(text, str):
        raise LagoonError(f"{where}: field {source.text_field!r} is missing or not a string "
                          f"(set text_field on source {source.label!r})")
    domain = source.domain or record.get(source.domain_field)
    if not isinstance(domain, str) or not domain:
        raise LagoonError(f"{where}: field {source.domain_field!r} (the domain) is missing or empty")
    doc_id = record.get(source.id_field)
    metadata = {k: v for k, v in record.items()
                if k not in (source.text_field, source.id_field) and isinstance(v, (str, int, float, bool))
                and not (isinstance(v, str) and len(v) > 200)}
    return Document(id=f"{source.label}:{doc_id}" if doc_id is not None else f"{source.label}:{where}",
                    text=text, source=source.label, domain=domain, metadata=metadata)


def read_jsonl(source: SourceConfig) -> Iterator[Document]:
    """JSON lines, one object per line; .gz and .zst files are decompressed on the fly."""
    for path in _expand(source.path, (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst", ".ndjson")):
        with _open_text(path) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise LagoonError(f"{path}:{number}: not valid JSON ({error.msg})") from None
                if not isinstance(record, dict):
                    raise LagoonError(f"{path}:{number}: expected a JSON object per line")
                yield _record_document(record, source, f"{path.name}:{number}")


def read_parquet(source: SourceConfig) -> Iterator[Document]:
    """Parquet files, read in record batches of the needed columns only."""
    import pyarrow.parquet as pq

    for path in _expand(source.path, (".parquet",)):
        try:
            parquet = pq.ParquetFile(path)
        except Exception as error:  # pyarrow raises several types for a file that is not Parquet
            raise LagoonError(f"{path}: not a readable Parquet file ({error})") from None
        names = parquet.schema_arrow.names
        if source.text_field not in names:
            raise LagoonError(f"{path}: no column {source.text_field!r} (columns: {', '.join(names)})")
        row = 0
        for batch in parquet.iter_batches(batch_size=1024):
            for record in batch.to_pylist():
                yield _record_document(record, source, f"{path.name}:{row}")
                row += 1


def read_text_folder(source: SourceConfig) -> Iterator[Document]:
    """Each matching file under a folder is one document; files that are not UTF-8 are skipped."""
    root = Path(source.path).expanduser()
    if not root.is_dir():
        raise LagoonError(f"text source {source.path} is not a folder")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if not any(fnmatch(path.name, pattern) for pattern in source.include):
            continue
        if path.stat().st_size > source.max_file_bytes:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        relative = path.relative_to(root).as_posix()
        yield Document(id=f"{source.label}:{relative}", text=text, source=source.label,
                       domain=source.domain, metadata={"path": relative, "extension": path.suffix})


def iter_source(source: SourceConfig, scale: float = 1.0) -> Iterator[Document]:
    """Documents of one source, before its limits."""
    if source.kind == "jsonl":
        return read_jsonl(source)
    if source.kind == "parquet":
        return read_parquet(source)
    if source.kind == "text":
        return read_text_folder(source)
    from lagoon.data.embedded import iter_embedded

    return iter_embedded(source, scale)


def read_source(source: SourceConfig, scale: float = 1.0) -> list[Document]:
    """All documents of `source`, honouring ``max_documents`` and ``max_bytes``.

    `scale` shrinks embedded corpora (the quick build); user sources are read as configured.
    """
    documents: list[Document] = []
    total_bytes = 0
    max_bytes = int(source.max_bytes * scale) if source.kind == "embedded" else source.max_bytes
    for document in iter_source(source, scale):
        if source.max_documents and len(documents) >= source.max_documents and source.kind != "embedded":
            break
        if max_bytes and total_bytes >= max_bytes:
            break
        documents.append(document)
        total_bytes += len(document.text.encode("utf-8"))
    return documents
