"""``lagoon data build CONFIG --out DIR --repair``: rebuild the parts of a shard set that fail verification.

A finished shard set keeps, beside every leaf and held-out set, the ``entry.json`` its build wrote (the
shard files with their sizes and SHA-256). Repair checks every file against it, removes each leaf or
held-out set with a missing, resized or altered file, removes the tokenizer when it no longer matches the
hash the manifest recorded (and with it every leaf, since all were tokenized with it), removes the
manifest, and lets the build resume: curation runs again (it is deterministic), finished parts are kept,
and the removed ones are tokenized again into the same bytes as before. A torn ``manifest.json`` is
repaired the same way. Nothing is removed from a directory built from a different data config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lagoon.data.shards import MANIFEST, file_sha256
from lagoon.errors import LagoonError


def read_manifest(out: Path) -> dict | None:
    """The manifest of a finished shard set; None when there is none; a one-line error when it is torn."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        return manifest
    except (ValueError, UnicodeDecodeError) as error:  # json.JSONDecodeError is a ValueError
        reason = getattr(error, "msg", None) or str(error)
        raise LagoonError(f"{path} is not valid JSON ({reason}; a torn or truncated write?); rebuild what fails "
                          f"verification with `lagoon data build CONFIG --out {out} --repair`") from None


def _entry_problem(out: Path, entry_path: Path) -> str | None:
    """Why a finished leaf (or held-out set) fails verification, or None when every file matches."""
    try:
        entry = json.loads(entry_path.read_text())
        files = [f for shard in entry["shards"] for f in (shard["tokens"], shard["documents"])]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"{entry_path.name} is unreadable"
    for file in files:
        path = out / file["path"]
        if not path.is_file():
            return f"{file['path']} is missing"
        if path.stat().st_size != file["bytes"]:
            return f"{file['path']} has {path.stat().st_size} bytes, not {file['bytes']}"
        if file_sha256(path) != file["sha256"]:
            return f"{file['path']} fails its SHA-256"
    return None


def prepare_repair(out: Path, fingerprint: str) -> list[str]:
    """Remove what fails verification (and the manifest) so that a build rebuilds it; returns what was removed,
    each with its reason. Refuses a directory whose manifest records a different data config."""
    from lagoon.data.tokenizer import tokenizer_hash

    try:
        manifest = read_manifest(out)
    except LagoonError:
        manifest = None   # torn: nothing to compare with, everything below is checked on its own
    if manifest is not None and manifest.get("build_fingerprint") != fingerprint:
        raise LagoonError(f"{out} holds a shard set built from a different data config; --repair rebuilds only with "
                          "the config it was built from (choose another --out, or delete it)")
    removed = []
    tokenizer = out / "tokenizer"
    if tokenizer.is_dir():
        recorded = (manifest or {}).get("tokenizer", {}).get("hash")
        complete = (tokenizer / "tokenizer.json").is_file() and (tokenizer / "token_bytes.npy").is_file()
        if not complete or (recorded is not None and tokenizer_hash(tokenizer) != recorded):
            shutil.rmtree(tokenizer)
            removed.append("tokenizer (missing files or a changed tokenizer.json; every leaf is tokenized again)")
            for kind in ("leaves", "eval"):
                if (out / kind).is_dir():
                    shutil.rmtree(out / kind)
    for kind in ("leaves", "eval"):
        for entry_path in sorted((out / kind).rglob("entry.json")) if (out / kind).is_dir() else []:
            problem = _entry_problem(out, entry_path)
            if problem is not None:
                shutil.rmtree(entry_path.parent)
                removed.append(f"{entry_path.parent.relative_to(out)} ({problem})")
    for kind in ("leaves", "eval"):   # parts the manifest lists that are gone altogether
        for name in (manifest or {}).get(kind, {}):
            if not (out / kind / name / "entry.json").is_file() and not any(r.startswith(f"{kind}/{name} ") for r in removed):
                removed.append(f"{kind}/{name} (missing)")
    if removed or manifest is None:
        (out / MANIFEST).unlink(missing_ok=True)   # the build writes it again once the parts are back
    return removed
