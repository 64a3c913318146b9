"""`lagoon serve CKPT` in a subprocess, for ``lagoon agent run|eval --model CKPT``.

The harness talks to a local checkpoint exactly as to any other endpoint, over HTTP: the same code path
as production and RL (where actors reach shared inference servers). The server listens on a free port on
127.0.0.1; its log goes to a file; it is stopped when the command ends.
"""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from lagoon.errors import LagoonError

_READY = re.compile(r"on (http://\S+)")


class LocalServer:
    def __init__(self, checkpoint: str | Path, log_path: str | Path, extra_args: list[str] | None = None,
                 startup_timeout_s: float = 600.0):
        self.checkpoint = Path(checkpoint)
        self.log_path = Path(log_path)
        self.extra_args = list(extra_args or [])
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen | None = None
        self.url: str | None = None

    @property
    def base_url(self) -> str:
        assert self.url is not None
        return self.url.rstrip("/") + "/v1"

    def __enter__(self) -> "LocalServer":
        import httpx

        if not (self.checkpoint / "config.json").is_file():
            raise LagoonError(f"{self.checkpoint} is neither a URL nor a checkpoint directory (no config.json)")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "lagoon", "serve", str(self.checkpoint), "--host", "127.0.0.1", "--port", "0",
             *self.extra_args], stdout=subprocess.PIPE, stderr=log, text=True)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:  # keep draining stdout into the log so the server never blocks on a full pipe
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout_s
        while self.url is None:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.__exit__(None, None, None)
                tail = self.log_path.read_text()[-500:].strip().splitlines()
                raise LagoonError(f"lagoon serve {self.checkpoint} did not start ({tail[-1] if tail else 'no output'}); "
                                  f"log: {self.log_path}")
            match = _READY.search(line)
            if match:
                self.url = match.group(1)
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise LagoonError(f"lagoon serve {self.checkpoint} never became healthy; log: {self.log_path}")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
