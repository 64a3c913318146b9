"""Publishing the trainer's weights: a new version in the store, then in every rollout engine, timed and checked.

    publisher = WeightPublisher.for_run(config.rl, run_dir, server_urls)
    publisher.publish(model, version, tokenizer_dir)              # a model ...
    publisher.publish(pairs, version, tokenizer_dir, config=cfg)  # ... or (runtime name, tensor) pairs in the
                                                                  # fixed order (`lagoon.weights.tensors`), e.g.
                                                                  # full tensors gathered one at a time on rank 0

Each version is written to the store (`lagoon.weights.store`: a Hugging Face Laguna directory per version and
``LATEST.json``) and moved into the servers of ``rl.servers.engine``:

- **lagoon** (``lagoon serve``), by ``rl.weights.transfer``: ``files`` (each server ``POST /v1/weights/load``s
  the version directory), ``shm`` (the same with the store in /dev/shm), ``shared_memory`` (a segment in
  /dev/shm each server copies straight into its parameters, `lagoon.weights.shared_memory`; the default for
  servers on this machine) or ``broadcast`` (torch.distributed buckets, `lagoon.weights.broadcast`). A server
  that is down is reported, not fatal: actors keep using the others.
- **vllm**: vLLM's native RL protocol (`lagoon.weights.vllm`): pause with ``keep``, start, the packed bucketed
  update while the trainer broadcasts (NCCL, or gloo through lagoon's vLLM plugin), finish with the version,
  resume — the tensors stream once, into the servers and the store together. Then the check
  (`lagoon.weights.probe`): each server's log-probabilities of a fixed token sequence must match the policy's
  within the tolerance of its dtype. A failed transfer or check is retried once from the version just
  written to the store; if it fails again the publish raises `LagoonError` (one line naming the server), the
  trainer stops, and `lagoon rl` restarts it from its last checkpoint (``rl.trainer.max_restarts``).

Each update's wall time and GB/s are returned, appended to ``RUN_DIR/weights/updates.jsonl`` and put in the
trainer's metrics.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from torch import nn

from lagoon.errors import LagoonError
from lagoon.rl.config import WeightsConfig
from lagoon.weights.store import UPDATES, VersionWriter, read_latest, segment_root, store_root, version_dir_name
from lagoon.weights.tensors import LayoutCheck, WeightSource, expected_layout, layout_of, ordered_tensors

__all__ = ["WeightPublisher", "read_latest", "segment_root", "store_root", "version_dir_name", "resolve_transfer"]


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


@dataclass
class ServerReply:
    url: str
    ok: bool
    detail: str = ""


class WeightPublisher:
    """Publishes versions of one model to the store and a list of servers (possibly none: the store alone)."""

    def __init__(self, config: WeightsConfig, run_dir: str | Path, servers: list[str], timeout_s: float = 600.0,
                 *, engine: str = "lagoon", served_model: str = "", server_dtype: str = "float32"):
        self.config = config
        self.run_dir = Path(run_dir)
        self.root = store_root(config, self.run_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run_dir / "weights" / UPDATES
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.servers = [url.rstrip("/") for url in servers]
        self.timeout_s = timeout_s
        self.engine = engine
        self.served_model = served_model
        self.server_dtype = server_dtype
        self.model_config = None
        self.transfer: str | None = None
        """The transfer in use (``auto`` resolved at the first publish; ``vllm-gloo``/``vllm-nccl`` for vLLM)."""
        self._segments = None   # lagoon.weights.shared_memory.SharedWeightWriter, for shared_memory
        self._http = None       # one httpx.Client for every update: a new one costs ~50 ms (its TLS context)
        self._vllm = None       # lagoon.weights.vllm.VLLMTarget, connected at the first publish

    @classmethod
    def for_run(cls, rl, run_dir: str | Path, servers: list[str]) -> "WeightPublisher":
        """The publisher an RL run's trainer uses: ``rl.weights`` into the servers of ``rl.servers``."""
        return cls(rl.weights, run_dir, servers, engine=rl.servers.engine, served_model=rl.servers.served_model_name,
                   server_dtype=rl.servers.dtype)

    # ----------------------------------------------------------------------------------------------
    def publish(self, source: WeightSource, version: int, tokenizer_dir: Path | None = None, *,
                config=None) -> dict[str, Any]:
        """Make `version` the weights every server samples from; returns the update's measurements.

        `source` is the model, or its (runtime name, tensor) pairs in the fixed order (then `config`, the
        model's `ModelConfig`, is needed once: the store writes it into each version)."""
        self.model_config = config or getattr(source, "config", None) or self.model_config
        if self.model_config is None:
            raise LagoonError("publishing a stream of tensors needs the model's config (publish(..., config=...))")
        started = time.perf_counter()
        if self.engine == "vllm" and self.servers:
            record = self._publish_vllm(source, version, tokenizer_dir, started)
        else:
            record = self._publish_lagoon(source, version, tokenizer_dir, started)
        record["gb_per_s"] = record["bytes"] / max(record["sync_s"], 1e-9) / 1e9
        record["finished_at"] = time.time()
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        return record

    def write_version(self, source: WeightSource, version: int, tokenizer_dir: Path | None) -> tuple[Path, str]:
        """Write version `version` to the store atomically; returns its path and weights digest."""
        writer = VersionWriter(self.root, version, self.model_config, tokenizer_dir)
        try:
            for name, tensor in ordered_tensors(source):
                writer.add(name, tensor)
            return writer.commit(self.config.keep_versions)
        except BaseException:
            writer.abandon()
            raise

    # ----------------------------------------------------------------------------------------------
    def _publish_lagoon(self, source: WeightSource, version: int, tokenizer_dir: Path | None,
                        started: float) -> dict[str, Any]:
        if not isinstance(source, (nn.Module, dict)):
            # lagoon's transfers lay out (or announce) every tensor before the first byte moves: keep one copy.
            layout, stream = _stream_layout(source, self.model_config)
            check = LayoutCheck(layout)
            source = {name: (check(name, t), t)[1] for name, t in stream}
            check.finish()
        num_bytes = sum(t.numel() * t.element_size() for _, t in ordered_tensors(source))
        if self.transfer is None:
            self.transfer = resolve_transfer(self.config, self.servers, num_bytes)
        record: dict[str, Any] = {"version": version, "transfer": self.transfer, "bytes": num_bytes,
                                  "servers": len(self.servers)}
        replies: list[ServerReply] = []
        if self.transfer == "shared_memory" and self.servers:
            writer = self._segment_writer()
            record["streamed"] = writer.streamable(source)
            if record["streamed"]:
                # The servers open the slot and copy each tensor as soon as it is written (the two copies overlap).
                path = writer.path(version % writer.slots)
                with ThreadPoolExecutor(len(self.servers)) as pool:
                    loads = [pool.submit(self._load, url, path, version, "load_shared", self.timeout_s)
                             for url in self.servers]
                    write = writer.write(source, version)
                    replies = [load.result() for load in loads]
            else:   # a first or changed layout: new files, which the servers can only open once written
                write = writer.write(source, version)
                replies = self._load_all("load_shared", write.path, version)
            record["segment_write_s"] = write.seconds
            record["sync_s"] = time.perf_counter() - started
            write_started = time.perf_counter()
            path, digest = self.write_version(source, version, tokenizer_dir)
            record["write_s"] = time.perf_counter() - write_started
        elif self.transfer == "broadcast" and self.servers:
            transfer = self._broadcast(source, version)
            record["sync_s"] = time.perf_counter() - started
            record["broadcast_s"] = transfer.seconds
            write_started = time.perf_counter()
            path, digest = self.write_version(source, version, tokenizer_dir)
            record["write_s"] = time.perf_counter() - write_started
            replies = [ServerReply(url, True) for url in self.servers]
        else:
            path, digest = self.write_version(source, version, tokenizer_dir)
            record["write_s"] = time.perf_counter() - started
            load_started = time.perf_counter()
            replies = self._load_all("load", path, version)
            record["load_s"] = time.perf_counter() - load_started
            record["sync_s"] = time.perf_counter() - started
        record["digest"] = digest
        record["path"] = str(path)
        record["failed_servers"] = [f"{r.url}: {r.detail}" for r in replies if not r.ok]
        return record

    # ----------------------------------------------------------------------------------------------
    def _publish_vllm(self, source: WeightSource, version: int, tokenizer_dir: Path | None,
                      started: float) -> dict[str, Any]:
        from lagoon.weights.vllm import VLLMError, VLLMTarget

        if self._vllm is None:
            dtype = getattr(torch, self.server_dtype)
            self._vllm = VLLMTarget(self.servers, self.config.backend, self.config.master_addr,
                                    int(self.config.bucket_mb * 2**20), dtype=dtype, timeout_s=self.timeout_s)
            self.transfer = f"vllm-{self.config.backend}"
        layout, stream = _stream_layout(source, self.model_config)
        writer = VersionWriter(self.root, version, self.model_config, tokenizer_dir)
        check = LayoutCheck(layout)

        def tee() -> Iterator[tuple[str, torch.Tensor]]:
            # One pass over the source feeds the servers and the store together.
            for name, tensor in stream:
                check(name, tensor)
                writer.add(name, tensor)
                yield name, tensor
            check.finish()

        feed = tee()
        failures: list[str] = []
        try:
            try:
                stats = self._vllm.send(feed, version, layout, self.config.pause_mode)
            except VLLMError as error:
                failures.append(str(error))
                self._vllm.reset()
                stats = None
            for _ in feed:        # the rest of the stream still belongs in the store
                pass
            path, digest = writer.commit(self.config.keep_versions)
        except BaseException:
            writer.abandon()
            raise
        record: dict[str, Any] = {"version": version, "transfer": self.transfer, "servers": len(self.servers),
                                  "bytes": sum(_numel(shape) * _itemsize(dtype) for _, dtype, shape in layout),
                                  "path": str(path), "digest": digest, "failed_servers": []}
        policy = source if isinstance(source, nn.Module) else None
        for attempt in range(2):
            if stats is not None:
                record["send_s"] = stats.seconds
                check_started = time.perf_counter()
                policy = policy or _load_policy(path)
                problem = self._check(policy)
                record["check_s"] = time.perf_counter() - check_started
                if problem is None:
                    break
                failures.append(problem)
            if attempt == 1:
                raise LagoonError(f"vLLM weight update to version {version} failed twice: {failures[-1]}")
            # Retry once, from the version just written to the store.
            policy = policy or _load_policy(path)
            try:
                stats = self._vllm.send(policy, version, layout_of(policy), self.config.pause_mode)
            except VLLMError as error:
                failures.append(str(error))
                self._vllm.reset()
                stats = None
        record["sync_s"] = time.perf_counter() - started
        record["retries"] = len(failures)
        record["problems"] = failures
        return record

    def _check(self, policy: nn.Module) -> str | None:
        """The log-probability probe on every server (`lagoon.weights.probe`): None, or what is wrong."""
        from lagoon.weights.probe import TOLERANCE, probe_difference

        tolerance = self.config.check_tolerance or TOLERANCE[self.server_dtype]
        for url in self.servers:
            difference = probe_difference(policy, url, self.served_model)
            if not difference <= tolerance:
                return (f"vLLM at {url} does not hold the trainer's weights after the update: the probe's "
                        f"log-probabilities differ by {difference:.3g} (tolerance {tolerance:g})")
        return None

    # ----------------------------------------------------------------------------------------------
    def _segment_writer(self):
        from lagoon.weights.shared_memory import SharedWeightWriter

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

    def _broadcast(self, source: WeightSource, version: int):
        from lagoon.weights.broadcast import push_weights

        return push_weights(source, self.servers, version, master_addr=self.config.master_addr,
                            master_port=self.config.master_port, backend=self.config.backend,
                            bucket_bytes=int(self.config.bucket_mb * 2**20), timeout_s=self.timeout_s)

    def server_weights(self) -> list[dict[str, Any] | None]:
        """Each server's version and digest (lagoon's ``GET /v1/weights``), None where it did not answer.
        vLLM servers report their version label only (no digest: `_check` probes them instead)."""
        import httpx

        if self.engine == "vllm":
            from lagoon.weights.vllm import ControlPlane, VLLMError, parse_version

            out = []
            for url in self.servers:
                server = ControlPlane(url, 30)
                try:
                    out.append({"policy_version": parse_version(server.weight_version(), url), "digest": None})
                except VLLMError:
                    out.append(None)
                finally:
                    server.close()
            return out
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
        if self._vllm is not None:
            self._vllm.close()
            self._vllm = None
        if self._http is not None:
            self._http.close()
            self._http = None
        if self.config.transfer == "shm":
            shutil.rmtree(self.root, ignore_errors=True)


def _stream_layout(source: WeightSource, model_config) -> tuple[list, Iterable[tuple[str, torch.Tensor]]]:
    """(layout, the source's pairs in the fixed order): a module's or mapping's own layout, or for a stream the
    layout its config implies in the dtype of its first tensor (peeked, then put back)."""
    if isinstance(source, (nn.Module, dict)):
        return layout_of(source), ordered_tensors(source)
    pairs = ordered_tensors(source)
    try:
        first = next(pairs)
    except StopIteration:
        raise LagoonError("the weights to publish are empty") from None

    def chained():
        yield first
        yield from pairs

    return expected_layout(model_config, first[1].dtype), chained()


def _load_policy(path: Path) -> nn.Module:
    from lagoon.model import from_pretrained

    return from_pretrained(path, dtype=torch.float32).eval()


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _itemsize(dtype_name: str) -> int:
    return getattr(torch, dtype_name).itemsize
