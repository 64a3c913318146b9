"""Held-out reward of a policy: the production harness on tasks no training step saw.

`evaluate_servers` measures whatever the given servers currently serve (the orchestrator calls it
before the trainer starts and after it finishes); `evaluate_checkpoint` starts a temporary
`lagoon serve` for one checkpoint (``lagoon rl eval CONFIG --run-dir DIR --checkpoint CKPT``).
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from lagoon.rl.rollout import Clients, evaluate
from lagoon.rl.tasks import agent_config, held_out_tasks


def evaluate_servers(config, urls: list[str], tokenizer_dir: Path, seed: int = 0) -> dict[str, Any]:
    from lagoon.infer.tokenizer import Tokenizer

    tasks = held_out_tasks(config)
    started = time.perf_counter()
    result = evaluate(tasks, Clients.for_run(config.rl, urls), Tokenizer.from_dir(tokenizer_dir),
                      agent_config(config, config.rl.eval.temperature),
                      attempts=config.rl.eval.attempts, concurrency=config.rl.actor.concurrent_episodes, seed=seed,
                      timeout_s=config.rl.actor.request_timeout_s)
    return {**result.to_dict(), "tasks": len(tasks), "seconds": time.perf_counter() - started}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def evaluate_checkpoint(config, checkpoint: Path, seed: int = 0) -> dict[str, Any]:
    """Serve `checkpoint` on a free local port just for this evaluation."""
    import os

    from lagoon.rl.servers import serve_command, wait_healthy

    port = free_port()
    command = serve_command(config, Path(checkpoint), port, 0)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    url = f"http://{config.rl.servers.host}:{port}"
    try:
        wait_healthy(url, config.rl.servers.startup_timeout_s, process)
        return {"checkpoint": str(checkpoint), **evaluate_servers(config, [url], Path(checkpoint), seed)}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
