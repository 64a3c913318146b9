"""Weights into stock vLLM servers through vLLM's native RL weight-sync protocol (trainer side).

vLLM started with ``VLLM_SERVER_DEV_MODE=1`` and ``--weight-transfer-config '{"backend": B}'`` exposes
(vllm/entrypoints/rl/online/api_router.py, v0.32):

    POST /init_weight_transfer_engine {"init_info": {...}}        once: the data plane's rendezvous
    POST /pause?mode=keep                                          park; in-flight requests stay queued
    POST /start_weight_update                                      begin a layerwise reload
    POST /update_weights {"update_info": {names, dtype_names, shapes}}   answered once every tensor arrived
    POST /finish_weight_update {"weight_version": "V"}             finish the reload, label the weights V
    POST /reset_prefix_cache                                       drop cached prefixes of the old weights
    POST /resume
    GET  /weight_info -> {"weight_version": "V"};  POST /update_weight_version {"new_version": "V"}

The trainer keeps ``/update_weights`` open on every server while it broadcasts. Data plane: B = ``nccl``
(vLLM's own engine; GPUs) or ``gloo`` (lagoon's vLLM plugin, `plugins/vllm`; CPUs): a process group with
the trainer at rank 0 and the servers from rank 1; the tensors, in the fixed order (`lagoon.weights.tensors`)
and under hub names (what vLLM's ``load_weights`` reads), are flattened to bytes and packed into chunks that
close once they exceed the buffer size — vLLM's packed-transfer rule (`chunk_plan`), which both ends apply
to the same ``update_info`` to cut the stream alike.

NCCL rendezvous without vLLM in the trainer's environment: the trainer mints an ``ncclUniqueId``
(`torch.cuda.nccl.unique_id`) and hands it to the servers (``nccl_unique_id_b64``); every rank then joins at
once and answers vLLM's one-element warm-up all-reduce. That path needs GPUs and has not been run here.

After every update the caller checks the weights (`lagoon.weights.probe`), so a transfer that loaded the
wrong bytes is caught, not served.
"""

from __future__ import annotations

import base64
import datetime
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lagoon.errors import LagoonError
from lagoon.weights.tensors import Layout, WeightSource, dtype_name, hub_tensors, layout_of, ordered_tensors

DEFAULT_BUFFER_BYTES = {"gloo": 4 * 2**20, "nccl": 1024 * 2**20}   # vLLM's NCCL default is 1 GiB


class VLLMError(LagoonError):
    """A vLLM server refused or failed a weight-sync call."""


def chunk_plan(sizes: list[int], buffer_bytes: int) -> list[list[int]]:
    """Indices of the tensors in each chunk: a chunk closes once its byte count exceeds `buffer_bytes`
    (vLLM's `packed_tensor.pack_tensors` rule; lagoon_vllm.gloo_engine applies the same)."""
    chunks: list[list[int]] = [[]]
    total = 0
    for index, size in enumerate(sizes):
        chunks[-1].append(index)
        total += size
        if total > buffer_bytes:
            chunks.append([])
            total = 0
    return [c for c in chunks if c]


class ControlPlane:
    """HTTP calls to one vLLM server's RL routes; each failure is one line naming the server and the route."""

    def __init__(self, url: str, timeout_s: float):
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(timeout=timeout_s)

    def call(self, route: str, body: dict[str, Any] | None = None, params: dict[str, Any] | None = None,
             method: str = "POST") -> dict[str, Any]:
        import httpx

        try:
            response = self.http.request(method, f"{self.url}/{route}", json=body, params=params)
        except httpx.HTTPError as error:
            raise VLLMError(f"vLLM at {self.url}: /{route} failed: {error or type(error).__name__}") from None
        if response.status_code != 200:
            detail = response.text.strip().replace("\n", " ")[:300]
            raise VLLMError(f"vLLM at {self.url}: /{route} answered {response.status_code}: {detail}")
        try:
            return response.json()
        except ValueError:
            return {}

    def weight_version(self) -> str:
        return str(self.call("weight_info", method="GET").get("weight_version"))

    def close(self) -> None:
        self.http.close()


@dataclass
class SendStats:
    version: int
    num_tensors: int
    num_bytes: int
    num_chunks: int
    seconds: float
    """From /pause to /resume on every server."""


class VLLMTarget:
    """The trainer's end of the weight sync with one or more vLLM servers (one data-plane group for all)."""

    def __init__(self, urls: list[str], backend: str = "gloo", master_addr: str = "127.0.0.1",
                 buffer_bytes: int | None = None, dtype: torch.dtype | None = None, timeout_s: float = 600.0):
        if backend not in ("gloo", "nccl"):
            raise LagoonError(f"rl.weights.backend must be 'gloo' or 'nccl' for vLLM, got {backend!r}")
        if not urls:
            raise LagoonError("the vLLM weight sync needs at least one server URL")
        self.servers = [ControlPlane(url, timeout_s) for url in urls]
        self.backend = backend
        self.master_addr = master_addr
        self.buffer_bytes = buffer_bytes or DEFAULT_BUFFER_BYTES[backend]
        self.dtype = dtype
        self.timeout_s = timeout_s
        self.group = None
        self._pool = ThreadPoolExecutor(max_workers=len(self.servers))

    # ----------------------------------------------------------------------------------------------
    def _on_all(self, action) -> list[Any]:
        """Run `action(server)` on every server at once; the first failure is raised (after all finish)."""
        futures = [self._pool.submit(action, server) for server in self.servers]
        return [future.result() for future in futures]

    def connect(self) -> None:
        """``/init_weight_transfer_engine`` on every server while the trainer opens rank 0 (once)."""
        if self.group is not None:
            return
        world_size = len(self.servers) + 1
        timeout = datetime.timedelta(seconds=self.timeout_s)
        if self.backend == "nccl":
            self._connect_nccl(world_size)
            return
        try:
            store = dist.TCPStore(self.master_addr, 0, world_size, is_master=True, timeout=timeout,
                                  wait_for_workers=False)
        except (RuntimeError, dist.DistNetworkError) as error:
            raise LagoonError(f"cannot listen on {self.master_addr} for the vLLM weight group: {error}") from None
        init = {"master_address": self.master_addr, "master_port": store.port, "world_size": world_size,
                "packed_buffer_size_bytes": self.buffer_bytes, "timeout_s": self.timeout_s}
        futures = [self._pool.submit(server.call, "init_weight_transfer_engine",
                                     {"init_info": {**init, "rank_offset": 1 + index}})
                   for index, server in enumerate(self.servers)]
        try:
            group = dist.ProcessGroupGloo(dist.PrefixStore("lagoon-vllm-weights", store), 0, world_size, timeout)
        except RuntimeError as error:
            for future in futures:
                if future.done() and future.exception() is not None:
                    raise future.exception() from None
            raise VLLMError(f"the vLLM servers did not join the weight group: {error}") from None
        for future in futures:
            future.result()
        self.store, self.group = store, group

    def _connect_nccl(self, world_size: int) -> None:
        import torch.cuda.nccl as nccl

        uid = nccl.unique_id()
        init = {"nccl_unique_id_b64": base64.b64encode(uid).decode(), "world_size": world_size, "packed": True,
                "packed_buffer_size_bytes": self.buffer_bytes}
        futures = [self._pool.submit(server.call, "init_weight_transfer_engine",
                                     {"init_info": {**init, "rank_offset": 1 + index}})
                   for index, server in enumerate(self.servers)]
        comm = nccl.init_rank(world_size, uid, 0)
        warmup = torch.zeros(1, device="cuda")
        nccl.all_reduce([warmup], comms=[comm])      # vLLM's communicators all-reduce one element first
        for future in futures:
            future.result()
        self.group = comm

    # ----------------------------------------------------------------------------------------------
    def send(self, source: WeightSource, version: int, layout: Layout | None = None,
             pause_mode: str = "keep") -> SendStats:
        """One weight version into every server: pause → start → packed update (broadcast) → finish → resume.

        `source` streams once; `layout` (runtime names, dtypes, shapes in the fixed order) announces it and
        defaults to a module's or mapping's own."""
        self.connect()
        started = time.perf_counter()
        layout = layout if layout is not None else layout_of(source)
        hub = [(name, self._wire(name, piece)) for runtime, dtype, shape in layout
               for name, piece in hub_tensors(runtime, torch.empty(shape, dtype=getattr(torch, dtype), device="meta"))]
        update_info = {"names": [n for n, _ in hub], "dtype_names": [dtype_name(t.dtype) for _, t in hub],
                       "shapes": [list(t.shape) for _, t in hub]}
        sizes = [t.numel() * t.element_size() for _, t in hub]
        chunks = chunk_plan(sizes, self.buffer_bytes)
        self._on_all(lambda server: server.call("pause", params={"mode": pause_mode}))
        self._on_all(lambda server: server.call("start_weight_update"))
        updates: list[Future] = [self._pool.submit(server.call, "update_weights", {"update_info": update_info})
                                 for server in self.servers]
        pieces = (self._wire(name, piece) for runtime, tensor in ordered_tensors(source)
                  for name, piece in hub_tensors(runtime, tensor))
        try:
            self._broadcast(pieces, chunks, updates)
        except RuntimeError as error:
            for future in updates:
                if future.done() and future.exception() is not None:
                    raise future.exception() from None
            raise VLLMError(f"the weight broadcast to vLLM failed: {error}") from None
        for future in updates:
            future.result()
        self._on_all(lambda server: server.call("finish_weight_update", {"weight_version": str(version)}))
        # Cached prefixes hold keys and values of the old weights: new requests must not reuse them. (Requests
        # kept across the pause continue on their own cache, as vLLM's "keep" mode does; their later tokens
        # carry the new version.)
        self._on_all(lambda server: server.call("reset_prefix_cache"))
        self._on_all(lambda server: server.call("resume"))
        return SendStats(version, len(hub), sum(sizes), len(chunks), time.perf_counter() - started)

    def _wire(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor as sent: the servers' dtype (vLLM keeps the correction bias in fp32 whatever it serves)."""
        if self.dtype is not None and tensor.is_floating_point() and not name.endswith("e_score_correction_bias"):
            tensor = tensor.to(self.dtype)
        return tensor.contiguous()

    def _broadcast(self, pieces: Iterator[torch.Tensor], chunks: list[list[int]], updates: list[Future]) -> None:
        """Send the hub tensors chunk by chunk, each chunk packed while the previous two are in flight."""
        in_flight: list = []
        for chunk in chunks:
            if any(f.done() and f.exception() is not None for f in updates):
                break   # a server refused the update before receiving: do not wait on it in a collective
            payload = torch.cat([next(pieces).reshape(-1).view(torch.uint8) for _ in chunk])
            if self.backend == "nccl":
                import torch.cuda.nccl as nccl

                payload = payload.cuda()
                nccl.broadcast([payload], root=0, comms=[self.group])
                in_flight.append((None, payload))
                continue
            options = dist.BroadcastOptions()
            options.rootRank = 0
            in_flight.append((self.group.broadcast([payload], options), payload))
            if len(in_flight) > 2:
                work, _ = in_flight.pop(0)
                work.wait()
        for work, _ in in_flight:
            if work is not None:
                work.wait()
        if self.backend == "nccl":
            torch.cuda.synchronize()

    def reset(self) -> None:
        """Drop the data-plane group after a failure; the next `send` sets up a fresh one."""
        if self.group is not None and self.backend == "gloo":
            shutdown = getattr(self.group, "shutdown", None)
            if shutdown is not None:
                try:
                    shutdown()
                except RuntimeError:
                    pass
        self.group = None

    def versions(self) -> list[str]:
        """Each server's weight version label (``GET /weight_info``)."""
        return self._on_all(lambda server: server.weight_version())

    def label(self, version: int) -> None:
        """Name the weights the servers hold now (a freshly started server says "default")."""
        self._on_all(lambda server: server.call("update_weight_version", {"new_version": str(version)}))

    def close(self) -> None:
        self.reset()
        self._pool.shutdown(wait=False)
        for server in self.servers:
            server.close()


def parse_version(label: str | None, url: str) -> int:
    """A vLLM weight-version label as lagoon's policy version; a server that reports none is an error."""
    try:
        return int(str(label))
    except (TypeError, ValueError):
        raise VLLMError(f"vLLM at {url} reports weight version {label!r}, not a policy version; "
                        "lagoon labels its servers' weights with integers") from None

