"""Publishing the trainer's weights to the inference servers: versioned, atomic, timed.

Every published version is a Hugging Face Laguna directory ``v_NNNNNNNN/`` in the weight store, written
to a staging directory and renamed into place (`lagoon.model.save_pretrained`), plus ``LATEST.json``
(replaced atomically) naming the newest version, its path and the SHA-256 digest of its weights
(`lagoon.infer.weight_sync.weights_digest`). Then the servers switch to it:

- ``files``: the store is ``RUN_DIR/weights``; each server is told ``POST /v1/weights/load {path, version}``
  and reads the safetensors itself (servers on this machine or on a shared file system);
- ``shm``: the same with the store in ``/dev/shm`` (RAM-backed), for servers on this machine;
- ``shared_memory``: the trainer copies each tensor once into a segment in ``/dev/shm``
  (`lagoon.infer.shared_weights`, two slots used in turn) and each server copies it straight into its
  parameters (``POST /v1/weights/load_shared``); the version directory is written after the servers have
  the weights. ``auto`` picks it when every server is on this machine (loopback URLs) and /dev/shm has room;
- ``broadcast``: the trainer and the servers form a private torch.distributed group (gloo on CPU, NCCL on
  GPU) and the trainer broadcasts the tensors in buckets (`lagoon.infer.weight_sync.push_weights`); the
  servers pause (keeping their requests), receive, verify and resume. The version directory is still
  written (it is the checkpoint store), but off the critical path, after the servers have the weights.

Each update's wall time and GB/s are returned, appended to ``RUN_DIR/weights/updates.jsonl`` and put in
the trainer's metrics. A server that is down is reported, not fatal: actors keep using the others.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from lagoon.errors import LagoonError
from lagoon.model import LagunaForCausalLM, save_pretrained
from lagoon.rl.config import WeightsConfig

LATEST = "LATEST.json"
UPDATES = "updates.jsonl"


def version_dir_name(version: int) -> str:
    return f"v_{version:08d}"


def store_root(config: WeightsConfig, run_dir: Path) -> Path:
    """Where versions are written: RUN_DIR/weights, or a per-run directory in /dev/shm for ``shm``."""
    if config.transfer == "shm" and Path("/dev/shm").is_dir():
        tag = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
        return Path("/dev/shm") / f"lagoon-weights-{tag}"
    return Path(run_dir) / "weights"


def segment_root(run_dir: Path) -> Path:
    """The per-run directory in /dev/shm holding the ``shared_memory`` transfer's segment files."""
    tag = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    return Path("/dev/shm") / f"lagoon-segments-{tag}"


def is_local(url: str) -> bool:
    """Whether a server URL names this machine by a loopback address."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_transfer(config: WeightsConfig, servers: list[str], num_bytes: int) -> str:
    """The transfer ``auto`` stands for with these servers and weights (any other setting as given)."""
    if config.transfer != "auto":
        return config.transfer
    shm = Path("/dev/shm")
    if servers and all(is_local(url) for url in servers) and shm.is_dir():
        stat = os.statvfs(shm)
        # Two slots of the weights, and room to spare for everything else that lives in /dev/shm.
        if stat.f_bavail * stat.f_frsize >= 2 * num_bytes + 256 * 2**20:
            return "shared_memory"
    return "files"


def read_latest(root: Path) -> dict[str, Any] | None:
    path = Path(root) / LATEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


@dataclass
class ServerReply:
    url: str
    ok: bool
    detail: str = ""


class WeightPublisher:
    """Publishes versions of one model to a list of servers (possibly none: the store alone)."""

    def __init__(self, config: WeightsConfig, run_dir: str | Path, servers: list[str], timeout_s: float = 600.0):
        self.config = config
        self.run_dir = Path(run_dir)
        self.root = store_root(config, self.run_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run_dir / "weights" / UPDATES
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.servers = [url.rstrip("/") for url in servers]
        self.timeout_s = timeout_s
        self.transfer: str | None = None
        """The transfer in use (``auto`` resolved at the first publish)."""
        self._segments = None   # lagoon.infer.shared_weights.SharedWeightWriter, for shared_memory
        self._http = None       # one httpx.Client for every update: a new one costs ~50 ms (its TLS context)

    # ----------------------------------------------------------------------------------------------
    def write_version(self, model: LagunaForCausalLM, version: int, tokenizer_dir: Path | None) -> tuple[Path, str]:
        """Write version `version` atomically; returns its path and weights digest."""
        from lagoon.infer.weight_sync import weights_digest

        path = save_pretrained(model, self.root / version_dir_name(version), tokenizer_dir=tokenizer_dir)
        digest = weights_digest(model)
        latest = {"version": version, "path": str(path), "digest": digest, "time": time.time()}
        staging = self.root / f".{LATEST}.tmp-{os.getpid()}"
        staging.write_text(json.dumps(latest) + "\n")
        staging.replace(self.root / LATEST)
        self._prune(version)
        return path, digest

    def _prune(self, newest: int) -> None:
        keep = {version_dir_name(v) for v in range(newest - self.config.keep_versions + 1, newest + 1)}
        for path in self.root.iterdir():
            if path.is_dir() and path.name.startswith("v_") and path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def publish(self, model: LagunaForCausalLM, version: int, tokenizer_dir: Path | None = None) -> dict[str, Any]:
        """Make `version` the weights every server samples from; returns the update's measurements."""
        num_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        started = time.perf_counter()
        replies: list[ServerReply] = []
        if self.transfer is None:
            self.transfer = resolve_transfer(self.config, self.servers, num_bytes)
        record: dict[str, Any] = {"version": version, "transfer": self.transfer, "bytes": num_bytes,
                                  "servers": len(self.servers)}
        if self.transfer == "shared_memory" and self.servers:
            writer = self._segment_writer()
            record["streamed"] = writer.streamable(model)
            if record["streamed"]:
                # The servers open the slot and copy each tensor as soon as it is written (the two copies overlap).
                path = writer.path(version % writer.slots)
                with ThreadPoolExecutor(len(self.servers)) as pool:
                    loads = [pool.submit(self._load, url, path, version, "load_shared", self.timeout_s)
                             for url in self.servers]
                    write = writer.write(model, version)
                    replies = [load.result() for load in loads]
            else:   # a first or changed layout: new files, which the servers can only open once written
                write = writer.write(model, version)
                replies = self._load_all("load_shared", write.path, version)
            record["segment_write_s"] = write.seconds
            record["sync_s"] = time.perf_counter() - started
            write_started = time.perf_counter()
            path, digest = self.write_version(model, version, tokenizer_dir)
            record["write_s"] = time.perf_counter() - write_started
        elif self.transfer == "broadcast" and self.servers:
            transfer = self._broadcast(model, version)
            record["sync_s"] = time.perf_counter() - started
            record["broadcast_s"] = transfer.seconds
            write_started = time.perf_counter()
            path, digest = self.write_version(model, version, tokenizer_dir)
            record["write_s"] = time.perf_counter() - write_started
            replies = [ServerReply(url, True) for url in self.servers]
        else:
            path, digest = self.write_version(model, version, tokenizer_dir)
            record["write_s"] = time.perf_counter() - started
            load_started = time.perf_counter()
            replies = self._load_all("load", path, version)
            record["load_s"] = time.perf_counter() - load_started
            record["sync_s"] = time.perf_counter() - started
        record["gb_per_s"] = num_bytes / max(record["sync_s"], 1e-9) / 1e9
        record["digest"] = digest
        record["path"] = str(path)
        record["failed_servers"] = [f"{r.url}: {r.detail}" for r in replies if not r.ok]
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        return record

    # ----------------------------------------------------------------------------------------------
    def _segment_writer(self):
        from lagoon.infer.shared_weights import SharedWeightWriter

        if self._segments is None:
            self._segments = SharedWeightWriter(segment_root(self.run_dir))
        return self._segments

    def _load_all(self, route: str, path: Path, version: int) -> list[ServerReply]:
        """Tell every server to load `path` through `route`, all at once (each copies in its own process)."""
        if len(self.servers) <= 1:   # no servers: a trainer publishing for servers that load on their own
            return [self._load(url, path, version, route) for url in self.servers]
        with ThreadPoolExecutor(len(self.servers)) as pool:
            return list(pool.map(lambda url: self._load(url, path, version, route), self.servers))

    def _load(self, url: str, path: Path, version: int, route: str = "load", wait_s: float = 0.0) -> ServerReply:
        """``load``/``load_shared`` pause with "keep" around the swap by themselves; "abort" is asked for
        explicitly. `wait_s`: how long a ``load_shared`` server waits for the version still being written."""
        import httpx

        body = {"path": str(path), "version": version, **({"wait_s": wait_s} if wait_s else {})}
        calls = [(route, body)]
        if self.config.pause_mode == "abort":
            calls = [("pause", {"mode": "abort"}), *calls, ("resume", {})]
        if self._http is None:
            self._http = httpx.Client()
        for name, body in calls:
            try:
                response = self._http.post(f"{url}/v1/weights/{name}", json=body, timeout=self.timeout_s)
            except httpx.HTTPError as error:
                return ServerReply(url, False, f"{name}: {error}")
            if response.status_code != 200:
                return ServerReply(url, False, f"{name}: {response.status_code} {response.text[:200]}")
        return ServerReply(url, True)

    def _broadcast(self, model: LagunaForCausalLM, version: int):
        from lagoon.infer.weight_sync import push_weights

        return push_weights(model, self.servers, version, master_addr=self.config.master_addr,
                            master_port=self.config.master_port, backend=self.config.backend,
                            bucket_bytes=int(self.config.bucket_mb * 2**20), timeout_s=self.timeout_s)

    def server_weights(self) -> list[dict[str, Any] | None]:
        """Each server's ``GET /v1/weights`` (version and digest), None where it did not answer."""
        import httpx

        out = []
        for url in self.servers:
            try:
                response = httpx.get(f"{url}/v1/weights", timeout=30)
                out.append(response.json() if response.status_code == 200 else None)
            except (httpx.HTTPError, ValueError):
                out.append(None)
        return out

    def remove_segments(self) -> None:
        """Delete the shared-memory segments (servers keep the weights they loaded)."""
        if self._segments is not None:
            self._segments.remove()
            self._segments = None

    def close(self) -> None:
        self.remove_segments()
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.config.transfer == "shm":
            shutil.rmtree(self.root, ignore_errors=True)


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
