"""Weights into running `lagoon serve` servers over torch.distributed (lagoon's own wire protocol).

Two ways in (both behind the server's ``/v1/weights/*`` endpoints):

- **From the checkpoint store**: the trainer writes a checkpoint directory; ``POST /v1/weights/load``
  reads its safetensors, checks every name and shape against the served model, then swaps them in.
- **Over torch.distributed**: the trainer (rank 0) and N servers (ranks 1..N) form a private process
  group (its own TCPStore, so it never touches the trainer's training group), and the trainer
  broadcasts every tensor in buckets. `push_weights` does the whole dance from the trainer side:
  it tells each server to join (``POST /v1/weights/receive``), then broadcasts.

Wire protocol of one broadcast, in order:
  1. header: the length (int64) then the UTF-8 JSON bytes of ``{"version", "tensors": [[name, dtype, shape], ...],
     "bucket_bytes"}``; tensors are lagoon's runtime names (= transformers' ``LagunaForCausalLM`` names) sorted,
     a tied ``lm_head.weight`` left out;
  2. a MAX all-reduce of one int: each server's verdict on the header (0 = every name and shape matches its model),
     so a mismatch stops everyone before any weight changes;
  3. the buckets: consecutive tensors of one dtype concatenated into flat buffers of at most ``bucket_bytes``
     (a larger tensor goes alone, sent from and received into its own memory without a copy), each broadcast
     from rank 0; two staging buffers per side let one bucket be packed or unpacked while the next is in flight;
  4. a MAX all-reduce of one int: each server's verdict after copying the weights in.

The order, names and digest are `lagoon.weights.tensors`'; the server reports the digest at ``GET /v1/weights``.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lagoon.errors import LagoonError
from lagoon.weights.tensors import WeightSource, layout_problem, ordered_tensors

# Bucket sizes by backend. Gloo over TCP moved the `small` preset 2-7x faster in 1-8 MiB buckets than in
# 64 MiB+ ones on the development machine (docs/LOG.md, 2026-11-29); NCCL favours large messages.
DEFAULT_BUCKET_BYTES = {"gloo": 4 * 2**20, "nccl": 256 * 2**20}
_OK, _REJECTED = 0, 1
_JOINED = "lagoon-weights-joined"


@dataclass
class TransferStats:
    """One weight transfer, as recorded by either side."""

    version: int
    num_tensors: int
    num_bytes: int
    num_buckets: int
    seconds: float
    """From the first bucket to the last (the header and its check excluded)."""
    gb_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------------
# A private process group


class WeightGroup:
    """A process group of its own (TCPStore + gloo or NCCL), independent of any default group."""

    def __init__(self, master_addr: str, master_port: int, world_size: int, rank: int, backend: str = "gloo",
                 timeout_s: float = 300.0, store: dist.TCPStore | None = None, device: torch.device | str | None = None):
        if backend not in ("gloo", "nccl"):
            raise LagoonError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
        if not 0 <= rank < world_size:
            raise LagoonError(f"rank {rank} is outside a world of size {world_size}")
        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.world_size, self.backend = rank, world_size, backend
        try:
            self.store = store or dist.TCPStore(master_addr, master_port, world_size, is_master=rank == 0,
                                                timeout=timeout, wait_for_workers=False)
            if rank != 0:
                self.store.set(f"{_JOINED}/{rank}", "1")  # lets the trainer see who is coming before it blocks
            prefixed = dist.PrefixStore("lagoon-weights", self.store)
            if backend == "nccl":
                # NCCL moves CUDA tensors only; the group works on the given (or current) GPU.
                self.device = torch.device(device if device is not None else f"cuda:{torch.cuda.current_device()}")
                torch.cuda.set_device(self.device)
                self.group = dist.ProcessGroupNCCL(prefixed, rank, world_size)
            else:
                self.device = torch.device("cpu")
                self.group = dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
        except (RuntimeError, dist.DistNetworkError) as error:
            raise LagoonError(f"cannot join the weight group at {master_addr}:{master_port}: {error}") from None

    def broadcast(self, tensor: torch.Tensor, root: int = 0) -> None:
        self.broadcast_async(tensor, root).wait()

    def broadcast_async(self, tensor: torch.Tensor, root: int = 0):
        """Start a broadcast; returns its work handle (collectives run in the order they are started)."""
        options = dist.BroadcastOptions()
        options.rootRank = root
        return self.group.broadcast([tensor], options)

    def max(self, value: int) -> int:
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        options = dist.AllreduceOptions()
        options.reduceOp = dist.ReduceOp.MAX
        self.group.allreduce([tensor], options).wait()
        return int(tensor.item())

    def close(self) -> None:
        shutdown = getattr(self.group, "shutdown", None)
        if shutdown is not None:
            try:
                shutdown()
            except RuntimeError:
                pass


def _buckets(entries: list[tuple[str, str, list[int]]], bucket_bytes: int) -> list[list[int]]:
    """Group consecutive same-dtype tensors (indices into `entries`) into buckets of at most `bucket_bytes`."""
    buckets: list[list[int]] = []
    size, dtype = 0, None
    for index, (_, dtype_name, shape) in enumerate(entries):
        nbytes = _numel(shape) * torch.empty((), dtype=getattr(torch, dtype_name)).element_size()
        if buckets and dtype_name == dtype and size + nbytes <= bucket_bytes:
            buckets[-1].append(index)
            size += nbytes
        else:
            buckets.append([index])
            size, dtype = nbytes, dtype_name
    return buckets


class _Staging:
    """Two reusable flat buffers per dtype (allocated once per transfer, grown on demand)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.buffers: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def buffer(self, slot: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
        key = (slot, dtype)
        if key not in self.buffers or self.buffers[key].numel() < numel:
            self.buffers[key] = torch.empty(numel, dtype=dtype, device=self.device)
        return self.buffers[key][:numel]


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


# ----------------------------------------------------------------------------------------------------
# Trainer side


def broadcast_weights(source: WeightSource, group: WeightGroup, version: int,
                      bucket_bytes: int | None = None) -> TransferStats:
    """Rank 0: send every weight of `source` to the other ranks (see the module docstring for the protocol).

    `bucket_bytes` None picks the backend's default (`DEFAULT_BUCKET_BYTES`).
    """
    assert group.rank == 0, "the trainer broadcasts from rank 0"
    bucket_bytes = bucket_bytes or DEFAULT_BUCKET_BYTES[group.backend]
    tensors = list(ordered_tensors(source))
    entries = [(name, str(t.dtype).removeprefix("torch."), list(t.shape)) for name, t in tensors]
    header = json.dumps({"version": version, "tensors": entries, "bucket_bytes": bucket_bytes}).encode()
    group.broadcast(torch.tensor([len(header)], dtype=torch.int64, device=group.device))
    group.broadcast(torch.frombuffer(bytearray(header), dtype=torch.uint8).to(group.device))
    if group.max(_OK) != _OK:
        raise LagoonError("a server rejected the weights' names or shapes (its /v1/weights/receive reply says why)")
    started = time.perf_counter()
    buckets = _buckets(entries, bucket_bytes)
    total = 0
    staging = _Staging(group.device)
    in_flight: list = []
    slot_work: dict[int, Any] = {}  # staging slot -> the broadcast still reading it
    with torch.no_grad():
        for index, bucket in enumerate(buckets):
            if len(bucket) == 1:  # a tensor alone travels as itself, no copy
                payload = tensors[bucket[0]][1].to(group.device).contiguous().reshape(-1)
                work = group.broadcast_async(payload)
            else:
                # Two staging buffers: fill one while the other's broadcast is still in flight.
                slot = index % 2
                if slot in slot_work:
                    slot_work.pop(slot).wait()
                parts = [tensors[i][1] for i in bucket]
                payload = staging.buffer(slot, sum(t.numel() for t in parts), parts[0].dtype)
                for piece, tensor in zip(payload.split([t.numel() for t in parts]), parts):
                    piece.copy_(tensor.reshape(-1))
                work = slot_work[slot] = group.broadcast_async(payload)
            in_flight.append((work, payload))  # keeps a moved-to-device payload alive until sent
            total += payload.numel() * payload.element_size()
        for work, _ in in_flight:
            work.wait()
    if group.max(_OK) != _OK:
        raise LagoonError("a server failed while applying the broadcast weights")
    seconds = time.perf_counter() - started
    return TransferStats(version, len(tensors), total, len(buckets), seconds, total / max(seconds, 1e-9) / 1e9)


# ----------------------------------------------------------------------------------------------------
# Server side


@dataclass
class IncomingWeights:
    """A validated header: what the trainer is about to send."""

    version: int
    entries: list[tuple[str, str, list[int]]]
    bucket_bytes: int


def receive_header(group: WeightGroup, model: nn.Module, expected_version: int | None = None) -> IncomingWeights:
    """Rank ≥ 1: read the header and vote on it; raises LagoonError (after voting) if it does not fit `model`."""
    length = torch.zeros(1, dtype=torch.int64, device=group.device)
    group.broadcast(length)
    raw = torch.zeros(int(length.item()), dtype=torch.uint8, device=group.device)
    group.broadcast(raw)
    header = json.loads(bytes(raw.cpu().numpy()).decode())
    incoming = IncomingWeights(int(header["version"]), [tuple(e) for e in header["tensors"]], int(header["bucket_bytes"]))
    problem = _header_problem(incoming, model)
    if problem is None and expected_version is not None and incoming.version != expected_version:
        problem = f"the trainer sends version {incoming.version}, the request said {expected_version}"
    verdict = group.max(_REJECTED if problem else _OK)
    if problem:
        raise LagoonError(f"the trainer's weights do not fit the served model: {problem}")
    if verdict != _OK:
        raise LagoonError("another server rejected the trainer's weights; nothing was changed")
    return incoming


def _header_problem(incoming: IncomingWeights, model: nn.Module) -> str | None:
    return layout_problem({name: shape for name, _, shape in incoming.entries}, model)


def receive_buckets(group: WeightGroup, model: nn.Module, incoming: IncomingWeights) -> TransferStats:
    """Rank ≥ 1: receive every bucket and copy it into `model` (casting to the model's dtypes)."""
    targets = dict(ordered_tensors(model))
    buckets = _buckets(incoming.entries, incoming.bucket_bytes)
    started = time.perf_counter()
    total, failed = 0, None
    staging = _Staging(group.device)
    pending = None  # (bucket, payload, work, direct): received next, unpacked one step later

    def unpack(bucket: list[int], payload: torch.Tensor, direct: bool) -> None:
        nonlocal failed
        if direct or failed is not None:
            return
        try:
            numels = [_numel(incoming.entries[i][2]) for i in bucket]
            for i, piece in zip(bucket, payload.split(numels)):
                name, _, shape = incoming.entries[i]
                targets[name].copy_(piece.view(shape))
        except RuntimeError as error:
            failed = str(error)  # keep receiving so the trainer is not left hanging

    with torch.no_grad():
        for index, bucket in enumerate(buckets):
            dtype = getattr(torch, incoming.entries[bucket[0]][1])
            numel = sum(_numel(incoming.entries[i][2]) for i in bucket)
            target = targets[incoming.entries[bucket[0]][0]] if len(bucket) == 1 else None
            # A lone tensor lands straight in the parameter when its dtype, device and layout allow.
            direct = (target is not None and target.dtype == dtype and target.device == group.device
                      and target.is_contiguous())
            payload = target.view(-1) if direct else staging.buffer(index % 2, numel, dtype)
            work = group.broadcast_async(payload)
            if pending is not None:
                pending[2].wait()
                unpack(pending[0], pending[1], pending[3])
            pending = (bucket, payload, work, direct)
            total += payload.numel() * payload.element_size()
        if pending is not None:
            pending[2].wait()
            unpack(pending[0], pending[1], pending[3])
    if group.max(_REJECTED if failed else _OK) != _OK or failed:
        raise LagoonError(f"applying the broadcast weights failed: {failed or 'on another server'}")
    seconds = time.perf_counter() - started
    return TransferStats(incoming.version, len(incoming.entries), total, len(buckets), seconds,
                         total / max(seconds, 1e-9) / 1e9)


# ----------------------------------------------------------------------------------------------------
# Trainer-side client: tell servers to receive, then broadcast


def push_weights(source: WeightSource, server_urls: list[str], version: int, *,
                 master_addr: str = "127.0.0.1", master_port: int = 0, backend: str = "gloo",
                 bucket_bytes: int | None = None, timeout_s: float = 300.0) -> TransferStats:
    """Broadcast `source` to every server in `server_urls` (``http://host:port``) as policy `version`.

    Each server pauses (keeping its requests), receives, checks, and resumes with the new weights.
    `master_addr` must be reachable from the servers; port 0 picks a free one. Returns the trainer-side stats.
    """
    import httpx

    if not server_urls:
        raise LagoonError("push_weights needs at least one server URL")
    world_size = len(server_urls) + 1
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        store = dist.TCPStore(master_addr, master_port, world_size, is_master=True, timeout=timeout,
                              wait_for_workers=False)
    except (RuntimeError, dist.DistNetworkError) as error:
        raise LagoonError(f"cannot listen on {master_addr}:{master_port} for the weight group: {error}") from None
    replies: list[httpx.Response | Exception | None] = [None] * len(server_urls)

    def ask(index: int, url: str) -> None:
        body = {"master_addr": master_addr, "master_port": store.port, "world_size": world_size,
                "rank": index + 1, "version": version, "backend": backend}
        try:
            replies[index] = httpx.post(url.rstrip("/") + "/v1/weights/receive", json=body, timeout=timeout_s + 30)
        except httpx.HTTPError as error:
            replies[index] = error

    threads = [threading.Thread(target=ask, args=(i, url), daemon=True) for i, url in enumerate(server_urls)]
    for thread in threads:
        thread.start()
    group = None
    try:
        _wait_for_servers(store, server_urls, replies, timeout_s)
        group = WeightGroup(master_addr, store.port, world_size, 0, backend, timeout_s, store=store)
        stats = broadcast_weights(source, group, version, bucket_bytes)
    except LagoonError as error:
        for thread in threads:
            thread.join(timeout=5)
        raise LagoonError(f"{error}; servers said: {_describe(replies, server_urls)}") from None
    finally:
        if group is not None:
            group.close()
    for thread in threads:
        thread.join()
    bad = [(url, r) for url, r in zip(server_urls, replies) if not (hasattr(r, "status_code") and r.status_code == 200)]
    if bad:
        detail = _describe([reply for _, reply in bad], [url for url, _ in bad])
        raise LagoonError(f"weights were sent but not every server confirmed: {detail}")
    return stats


def _wait_for_servers(store: dist.TCPStore, urls: list[str], replies: list, timeout_s: float) -> None:
    """Poll until every server has joined the store; fail at once if one answered before joining (an error)."""
    keys = [f"{_JOINED}/{rank}" for rank in range(1, len(urls) + 1)]
    deadline = time.monotonic() + timeout_s
    while not store.check(keys):
        if any(reply is not None for reply in replies) or time.monotonic() > deadline:
            raise LagoonError("not every server joined the weight group")
        time.sleep(0.01)


def _describe(replies: list, urls: list[str]) -> str:
    parts = []
    for url, reply in zip(urls, replies):
        if reply is None:
            parts.append(f"{url}: no reply")
        elif isinstance(reply, Exception):
            parts.append(f"{url}: {reply}")
        else:
            try:
                message = reply.json().get("error", {}).get("message", reply.text)
            except ValueError:
                message = reply.text
            parts.append(f"{url}: {reply.status_code} {message}")
    return "; ".join(parts)
