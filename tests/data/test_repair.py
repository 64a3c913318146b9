"""A damaged shard set: the error says how to repair it, `data build --repair` rebuilds exactly what fails
(the same bytes as before), a torn manifest is one line, and `data stats --verify` says what it checked."""

from __future__ import annotations

import json
import re

from lagoon.data.shards import ShardSet
from tests.conftest import ROOT, assert_one_line_error

CONFIG = str(ROOT / "configs" / "data_embedded.toml")


def _build(lagoon_cli, out, *extra: str):
    return lagoon_cli("data", "build", CONFIG, "--out", str(out), "--set", "data.build.quick=true", "--quiet", *extra)


def _checksums(directory) -> dict:
    manifest = json.loads((directory / "manifest.json").read_text())
    return {name: [s["tokens"]["sha256"] for s in entry["shards"]]
            for kind in ("leaves", "eval") for name, entry in manifest[kind].items()} | {
        "tokenizer": manifest["tokenizer"]["hash"]}


def _token_files(directory) -> dict:
    return {path: path.stat().st_mtime_ns for path in directory.rglob("*.tokens")}


def test_a_corrupted_shard_names_the_repair_and_repair_rebuilds_only_it(shards_copy, quick_shards_dir, lagoon_cli):
    manifest = json.loads((shards_copy / "manifest.json").read_text())
    leaf = sorted(manifest["leaves"])[0]
    token_file = shards_copy / manifest["leaves"][leaf]["shards"][0]["tokens"]["path"]
    data = bytearray(token_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    token_file.write_bytes(bytes(data))
    untouched = {path: mtime for path, mtime in _token_files(shards_copy).items() if path != token_file}

    assert_one_line_error(lagoon_cli("data", "stats", str(shards_copy), "--verify"), str(token_file),
                          f"lagoon data build CONFIG --out {shards_copy} --repair")
    repaired = _build(lagoon_cli, shards_copy, "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert f"repair: rebuilding 1 part(s): leaves/{leaf} ({token_file.relative_to(shards_copy)} fails its SHA-256)" \
        in repaired.stdout
    assert _checksums(shards_copy) == _checksums(quick_shards_dir)     # the same bytes as the original build
    ShardSet.open(shards_copy).verify_all()
    assert {path: mtime for path, mtime in _token_files(shards_copy).items() if path != token_file} == untouched
    assert not (shards_copy / ".build").exists()


def test_a_torn_manifest_is_one_line_and_repair_writes_it_again(shards_copy, quick_shards_dir, lagoon_cli):
    path = shards_copy / "manifest.json"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    tokens = _token_files(shards_copy)

    assert_one_line_error(_build(lagoon_cli, shards_copy), f"{path} is not valid JSON", "--repair")
    assert_one_line_error(lagoon_cli("data", "stats", str(shards_copy)), "not valid JSON", "--repair")
    repaired = _build(lagoon_cli, shards_copy, "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert "repair: every file matches its checksum; writing the manifest" in repaired.stdout
    assert _checksums(shards_copy) == _checksums(quick_shards_dir)
    assert _token_files(shards_copy) == tokens                        # no shard was written again


def test_stats_verify_says_what_it_verified(quick_shards_dir, lagoon_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    manifest = json.loads((quick_shards_dir / "manifest.json").read_text())
    files = sum(2 * len(entry["shards"]) for kind in ("leaves", "eval") for entry in manifest[kind].values())
    plain = lagoon_cli("data", "stats", str(quick_shards_dir))
    assert plain.returncode == 0 and "verified" not in plain.stdout
    checked = lagoon_cli("data", "stats", str(quick_shards_dir), "--verify")
    assert checked.returncode == 0, checked.stderr
    line = next(line for line in checked.stdout.splitlines() if line.startswith("verified:"))
    assert re.search(rf"verified: {files} shard files \(.*, {len(manifest['leaves'])} leaves and "
                     rf"{len(manifest['eval'])} held-out sets\) match their SHA-256", line), line
    as_json = json.loads(lagoon_cli("data", "stats", str(quick_shards_dir), "--verify", "--json").stdout)
    assert as_json["verified"]["files"] == files
