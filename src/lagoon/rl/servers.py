"""Local inference servers for an RL run: `lagoon serve` processes started, watched and stopped by `lagoon rl`.

Each server is an ordinary ``lagoon serve CKPT --port P`` process (the same one users run by hand),
started with the newest published weights of the run (``weights/LATEST.json``) or the initial
checkpoint, at that policy version. ``lagoon rl serve CONFIG --run-dir DIR --index I`` runs one such
server in the foreground, for putting servers on other machines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lagoon.errors import LagoonError
from lagoon.weights.publish import read_latest, store_root


def current_weights(config, run_dir: Path) -> tuple[Path, int]:
    """The checkpoint servers should start from, and its policy version."""
    latest = read_latest(store_root(config.rl.weights, run_dir))
    if latest is not None and Path(latest["path"]).is_dir():
        return Path(latest["path"]), int(latest["version"])
    if not config.rl.init_checkpoint:
        raise LagoonError("no published weights and rl.init_checkpoint is empty: nothing to serve")
    return Path(config.rl.init_checkpoint), 0


def serve_command(config, checkpoint: Path, port: int, version: int, index: int = 0) -> list[str]:
    servers = config.rl.servers
    return [sys.executable, "-m", "lagoon", "serve", str(checkpoint), "--host", servers.host, "--port", str(port),
            "--max-batch", str(servers.max_batch_size), "--threads", str(servers.threads),
            "--device", servers.devices[index % len(servers.devices)], "--dtype", servers.dtype,
            "--policy-version", str(version), "--log-level", "warning"]


def die_with_parent() -> None:
    """Run in a child before exec: the kernel sends it SIGTERM if the parent dies (Linux), so a killed
    `lagoon rl` never leaves servers, trainers or actors behind."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except OSError:
        pass


def free_ports(host: str, count: int, first: int = 0) -> list[int]:
    """`count` TCP ports free on `host`: `first`, `first`+1, ... (each checked), or any free ones if `first` is 0."""
    import socket

    ports = []
    for index in range(count):
        with socket.socket() as sock:
            try:
                sock.bind((host, first + index if first else 0))
            except OSError:
                raise LagoonError(f"port {first + index} on {host} is in use (another server or run?); "
                                  "set rl.servers.base_port = 0 to pick free ports") from None
            ports.append(sock.getsockname()[1])
    return ports


def wait_healthy(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise LagoonError(f"the inference server for {url} exited with code {process.returncode} while starting")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise LagoonError(f"the inference server at {url} did not become healthy within {timeout_s:.0f} s")


@dataclass
class LocalServer:
    url: str
    port: int
    process: subprocess.Popen
    log: Path


class LocalServers:
    """`count` local `lagoon serve` processes on consecutive ports."""

    def __init__(self, config, run_dir: Path):
        self.config = config
        self.run_dir = Path(run_dir)
        self.servers: list[LocalServer] = []

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def start(self) -> list[str]:
        checkpoint, version = current_weights(self.config, self.run_dir)
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        settings = self.config.rl.servers
        for index, port in enumerate(free_ports(settings.host, settings.count, settings.base_port)):
            url = f"http://{settings.host}:{port}"
            log = logs / f"server-{index}.log"
            with log.open("a") as handle:
                process = subprocess.Popen(serve_command(self.config, checkpoint, port, version, index),
                                           stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                           env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=die_with_parent)
            self.servers.append(LocalServer(url, port, process, log))
        for server in self.servers:
            try:
                wait_healthy(server.url, settings.startup_timeout_s, server.process)
            except LagoonError as error:
                tail = server.log.read_text()[-800:] if server.log.is_file() else ""
                self.stop()
                raise LagoonError(f"{error}; its log ends with: {tail.strip()[-300:]}") from None
        (self.run_dir / "servers.json").write_text(
            json.dumps({"urls": self.urls, "engine": "lagoon", "pids": [s.process.pid for s in self.servers]}) + "\n")
        return self.urls

    def dead(self) -> list[LocalServer]:
        return [s for s in self.servers if s.process.poll() is not None]

    def stop(self) -> None:
        for server in self.servers:
            if server.process.poll() is None:
                server.process.terminate()
        for server in self.servers:
            try:
                server.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
        self.servers = []


def serve_one(config, run_dir: Path, index: int) -> int:
    """`lagoon rl serve`: run server `index` of this run in the foreground (replaces this process), on port
    ``rl.servers.base_port + index`` (8000 + index when base_port is 0)."""
    checkpoint, version = current_weights(config, Path(run_dir))
    command = serve_command(config, checkpoint, (config.rl.servers.base_port or 8000) + index, version, index)
    os.execv(command[0], command)
    return 0  # not reached
