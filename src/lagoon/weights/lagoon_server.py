"""The weight-update endpoints RL uses: pause, load from the checkpoint store, receive a broadcast, resume.

    POST /v1/weights/pause    {"mode": "keep" | "abort"}      park the engine between steps
    POST /v1/weights/load     {"path": CKPT_DIR, "version": int}
    POST /v1/weights/receive  {"master_addr", "master_port", "world_size", "rank", "version", "backend"}
    POST /v1/weights/load_shared {"path": SEGMENT_FILE, "version": int, "wait_s": float = 0}
                                      (same machine: lagoon.weights.shared_memory; wait_s > 0: copy while written)
    POST /v1/weights/resume
    GET  /v1/weights          {"policy_version", "digest", "paused", "complete", "last_update", ...}

``load`` checks the directory's config.json against the served architecture and, when a lagoon
``manifest.json`` is present (training checkpoints have one), the SHA-256 of config.json and the weight files.
``load`` and ``receive`` may be called without a pause: they then pause with "keep" around the swap.
Requests that arrive while paused queue and run after ``resume``. One weight operation runs at a time
(a second one gets 409). If a transfer fails after weights started to change, the server stays paused
and refuses ``resume`` (409) until a complete ``load`` or ``receive`` succeeds.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from lagoon.errors import LagoonError
from lagoon.infer.protocol import RequestError
from lagoon.infer.state import ServerState

# config.json keys that do not change what the model computes at inference time.
_TRAINING_ONLY = {"initializer_range", "router_aux_loss_coef", "bos_token_id", "eos_token_id", "pad_token_id"}


async def _body(request: Request) -> dict[str, Any]:
    from lagoon.infer.server import read_json

    if not await request.body():
        return {}
    body = await read_json(request)
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


def _version(body: dict[str, Any], state: ServerState) -> int:
    version = body.get("version")
    if version is None:
        return state.engine.policy_version + 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise RequestError("'version' must be a non-negative integer", "version")
    return version


def _exclusive(state: ServerState):
    """Context manager: the weights lock, or 409 if another weight operation is running."""
    class _Guard:
        def __enter__(self):
            if not state.weights_lock.acquire(blocking=False):
                raise RequestError("another weight operation is in progress", status=409, kind="conflict_error")

        def __exit__(self, *exc):
            state.weights_lock.release()

    return _Guard()


def _config_mismatch(served: dict[str, Any], incoming: dict[str, Any]) -> str | None:
    for key in sorted(set(served) | set(incoming)):
        if key in _TRAINING_ONLY:
            continue
        if served.get(key) != incoming.get(key):
            return f"config.json differs in {key!r}: {incoming.get(key)!r}, serving {served.get(key)!r}"
    return None


def _manifest_problem(directory: Path) -> tuple[bool, str | None]:
    """(checked, problem): when a lagoon ``manifest.json`` is present, the weight files must match its SHA-256."""
    import hashlib
    import json

    manifest = directory / "manifest.json"
    if not manifest.is_file():
        return False, None
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        return True, "manifest.json is not a valid lagoon manifest"
    for name, entry in sorted(files.items()):
        if not (name == "config.json" or name.startswith("model") and ".safetensors" in name):
            continue
        digest = hashlib.sha256()
        try:
            with (directory / name).open("rb") as handle:
                while block := handle.read(1 << 22):
                    digest.update(block)
        except OSError:
            return True, f"{name} is listed in manifest.json but missing"
        if digest.hexdigest() != entry.get("sha256"):
            return True, f"{name} does not match its SHA-256 in manifest.json"
    return True, None


def load_checkpoint(state: ServerState, path: str, version: int) -> dict[str, Any]:
    """Read a checkpoint directory, check it fits the served model, swap its weights in (blocking)."""
    from lagoon.model.hf import from_hub_state_dict, read_config, read_weights

    directory = Path(path)
    if not directory.is_dir():
        raise RequestError(f"checkpoint directory {path} does not exist", "path")
    started = time.perf_counter()
    verified, problem = _manifest_problem(directory)
    if problem:
        raise RequestError(f"{path}: {problem}", "path")
    try:
        config = read_config(directory)
        mismatch = _config_mismatch(state.engine.config.to_hf_dict(), config.to_hf_dict())
        if mismatch:
            raise RequestError(f"{path} is not the served architecture: {mismatch}", "path")
        weights = from_hub_state_dict(read_weights(directory))
        state.engine.load_state_dict(weights, version)
    except LagoonError as error:
        raise RequestError(str(error), "path") from None
    seconds = time.perf_counter() - started
    num_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    state.forget_digest()
    state.last_update = {"source": "load", "path": str(directory), "version": version, "num_bytes": num_bytes,
                         "manifest_verified": verified,
                         "seconds": seconds, "gb_per_s": num_bytes / max(seconds, 1e-9) / 1e9, "at": time.time()}
    return state.last_update


def load_shared(state: ServerState, path: str, version: int, wait_s: float = 0.0) -> dict[str, Any]:
    """Copy a shared-memory segment's tensors straight into the served model (blocking); with `wait_s` > 0
    the version may still be being written: each tensor is copied once the writer has passed it."""
    from lagoon.weights.shared_memory import SegmentCache

    started = time.perf_counter()
    if state.segments is None:
        state.segments = SegmentCache()
    try:
        segment = state.segments.get(path)
    except LagoonError as error:
        raise RequestError(str(error), "path") from None
    problem = segment.problem(state.engine.model)
    if problem:
        raise RequestError(f"{path} does not fit the served model: {problem}", "path")
    try:
        segment.wait_for(version, 0, wait_s)   # before pausing: a wrong version changes nothing
    except LagoonError as error:
        raise RequestError(str(error), "version", status=409, kind="conflict_error") from None
    copied = {}
    try:
        state.engine.update_weights(lambda model: copied.update(bytes=segment.copy_into(model, version, wait_s)),
                                    version)
    except LagoonError as error:   # the writer lapped this reader: the weights are torn, the server stays paused
        raise RequestError(str(error), status=500, kind="server_error") from None
    seconds = time.perf_counter() - started
    state.forget_digest()
    state.last_update = {"source": "shared", "path": str(path), "version": version, "num_bytes": copied["bytes"],
                         "seconds": seconds, "gb_per_s": copied["bytes"] / max(seconds, 1e-9) / 1e9, "at": time.time()}
    return state.last_update


def receive_broadcast(state: ServerState, body: dict[str, Any], version: int) -> dict[str, Any]:
    """Join the trainer's weight group and receive its broadcast into the served model (blocking)."""
    from lagoon.weights.broadcast import WeightGroup, receive_buckets, receive_header

    fields = {}
    for name, kind in (("master_addr", str), ("master_port", int), ("world_size", int), ("rank", int)):
        value = body.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):
            raise RequestError(f"'{name}' is required and must be {'a string' if kind is str else 'an integer'}", name)
        fields[name] = value
    backend = body.get("backend", "gloo")
    if backend not in ("gloo", "nccl"):
        raise RequestError("'backend' must be 'gloo' or 'nccl'", "backend")
    if not 1 <= fields["rank"] < fields["world_size"]:
        raise RequestError("'rank' must be in 1..world_size-1 (the trainer is rank 0)", "rank")
    started = time.perf_counter()
    try:
        group = WeightGroup(fields["master_addr"], fields["master_port"], fields["world_size"], fields["rank"],
                            backend, state.config.weight_transfer_timeout_s,
                            device=state.engine.device if backend == "nccl" else None)
    except LagoonError as error:
        raise RequestError(str(error), "master_addr") from None
    engine = state.engine
    try:
        incoming = receive_header(group, engine.model, expected_version=version)
        received = {}
        engine.update_weights(lambda model: received.update(stats=receive_buckets(group, model, incoming)), version)
        stats = received["stats"]
    except LagoonError as error:
        raise RequestError(str(error), status=400 if engine.weights_complete else 500,
                           kind="invalid_request_error" if engine.weights_complete else "server_error") from None
    except RuntimeError as error:  # the collective itself failed (timeout, peer gone)
        raise RequestError(f"weight broadcast failed: {error}", status=500, kind="server_error") from None
    finally:
        group.close()
    state.forget_digest()
    state.last_update = {"source": "broadcast", "backend": backend, "version": version, "num_bytes": stats.num_bytes,
                         "num_buckets": stats.num_buckets, "seconds": stats.seconds, "gb_per_s": stats.gb_per_s,
                         "total_seconds": time.perf_counter() - started, "at": time.time()}
    return state.last_update


def _path(body: dict[str, Any], what: str) -> str:
    """The request's non-empty ``path`` string, or a one-line 400 naming what it should be."""
    path = body.get("path")
    if not isinstance(path, str) or not path:
        raise RequestError(f"'path' ({what}) is required", "path")
    return path


def register_weight_routes(app: FastAPI, state: ServerState) -> None:
    engine = state.engine

    def status() -> dict[str, Any]:
        return {"policy_version": engine.policy_version, "paused": engine.paused,
                "complete": engine.weights_complete, **engine.stats()}

    @app.get("/v1/weights")
    async def weights():
        def describe() -> dict[str, Any]:
            with state.weights_lock:
                tensors = list(engine.model.state_dict().values())
                return {**status(), "digest": state.digest(), "dtype": str(engine.dtype).removeprefix("torch."),
                        "num_tensors": len(tensors),
                        "num_bytes": sum(t.numel() * t.element_size() for t in tensors),
                        "last_update": state.last_update}

        return await asyncio.to_thread(describe)

    @app.post("/v1/weights/pause")
    async def pause(request: Request):
        body = await _body(request)
        mode = body.get("mode", "keep")
        if mode not in ("keep", "abort"):
            raise RequestError("'mode' must be 'keep' or 'abort'", "mode")
        await asyncio.to_thread(engine.pause, mode)
        return {**status(), "mode": mode}

    @app.post("/v1/weights/resume")
    async def resume():
        try:
            await asyncio.to_thread(engine.resume)
        except LagoonError as error:
            raise RequestError(str(error), status=409, kind="conflict_error") from None
        return status()

    @app.post("/v1/weights/load")
    async def load(request: Request):
        body = await _body(request)
        path = _path(body, "a checkpoint directory")
        version = _version(body, state)
        with _exclusive(state):
            update = await asyncio.to_thread(load_checkpoint, state, path, version)
        return {**status(), "update": update}

    @app.post("/v1/weights/load_shared")
    async def load_from_shared_memory(request: Request):
        body = await _body(request)
        path = _path(body, "a shared weight segment file")
        version = _version(body, state)
        wait_s = body.get("wait_s", 0.0)
        if isinstance(wait_s, bool) or not isinstance(wait_s, (int, float)) or not 0 <= wait_s <= 3600:
            raise RequestError("'wait_s' must be a number of seconds in [0, 3600]", "wait_s")
        with _exclusive(state):
            update = await asyncio.to_thread(load_shared, state, path, version, float(wait_s))
        return {**status(), "update": update}

    @app.post("/v1/weights/receive")
    async def receive(request: Request):
        body = await _body(request)
        version = _version(body, state)
        with _exclusive(state):
            update = await asyncio.to_thread(receive_broadcast, state, body, version)
        return {**status(), "update": update}
