"""Actors as Ray actors (``[rl.actor] backend = "ray"``): the same `Actor` loop, placed by Ray.

Each Ray actor holds one `lagoon.rl.actor.Actor` and runs its loop; `stop()` runs concurrently
(``max_concurrency = 2``) and ends the loop after the finished groups are appended. The orchestrator
restarts an actor whose task failed, as it does for actor processes. Ray only schedules the actors: they
still reach the servers over HTTP and the trainer through the Iceberg table, so a Ray cluster needs the
servers' URLs and a table every node can reach (a REST catalog, or a shared file system).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class RayActorHost:
    """The body of one Ray actor."""

    def __init__(self, config_data: dict[str, Any], run_dir: str, index: int, servers: list[str]):
        from lagoon.config import LagoonConfig
        from lagoon.configio import from_dict
        from lagoon.rl.actor import Actor

        config = from_dict(LagoonConfig, config_data)
        self.actor = Actor(config, Path(run_dir), index, servers, say=lambda line: print(line, flush=True))

    def run(self) -> dict[str, Any]:
        return self.actor.run()

    def stop(self) -> None:
        self.actor.stop.set()


class RayActors:
    """Start, watch, restart and stop N Ray actors."""

    def __init__(self, config, config_data: dict[str, Any], run_dir: Path, servers: list[str]):
        import ray

        self.ray = ray
        self.config = config
        self.config_data = config_data
        self.run_dir = str(Path(run_dir).resolve())
        self.servers = servers
        if not ray.is_initialized():
            address = config.rl.actor.ray_address or None
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     **({} if address else {"num_cpus": max(2, config.rl.actor.num_actors)}))
        self.remote = ray.remote(num_cpus=0.5, max_concurrency=2)(RayActorHost)
        self.handles: dict[int, Any] = {}
        self.refs: dict[int, Any] = {}

    def start(self, index: int) -> None:
        handle = self.remote.remote(self.config_data, self.run_dir, index, self.servers)
        self.handles[index] = handle
        self.refs[index] = handle.run.remote()

    def start_all(self) -> None:
        for index in range(self.config.rl.actor.num_actors):
            self.start(index)

    def finished(self) -> list[tuple[int, str | None]]:
        """Actors whose loop ended since the last call: (index, error or None)."""
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs.values()), num_returns=len(self.refs), timeout=0)
        out = []
        for index, ref in list(self.refs.items()):
            if ref in ready:
                del self.refs[index]
                try:
                    self.ray.get(ref)
                    out.append((index, None))
                except Exception as error:  # the Ray task failed (actor died or raised)
                    out.append((index, str(error).splitlines()[0][:300]))
        return out

    def kill(self, index: int) -> None:
        """Kill actor `index` at once (as a crash would)."""
        self.ray.kill(self.handles[index], no_restart=True)

    def stop(self, timeout_s: float = 30.0) -> None:
        for handle in self.handles.values():
            try:
                handle.stop.remote()
            except Exception:
                pass
        if self.refs:
            self.ray.wait(list(self.refs.values()), num_returns=len(self.refs), timeout=timeout_s)
        for handle in self.handles.values():
            self.ray.kill(handle, no_restart=True)
        self.handles, self.refs = {}, {}
