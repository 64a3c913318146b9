"""`lagoon rl CONFIG --run-dir DIR` and `lagoon.rl.run(config, run_dir)`: the whole loop on one machine.

    1. the initial policy: ``rl.init_checkpoint``, or the supervised warm-up (`lagoon.rl.sft`);
    2. the trajectory table (created if absent);
    3. inference servers: ``rl.servers.count`` local `lagoon serve` processes, or vLLM servers with
       ``rl.servers.engine = "vllm"`` (`lagoon.rl.vllm_servers`), or ``rl.servers.urls``; a local server that
       dies stops the run with one line (rerun to resume);
    4. the held-out reward of the policy RL starts from — after the warm-up, if any (``eval_before.json``,
       whose ``policy`` says which);
    5. the trainer (a process, or `lagoon launch` over torchrun) and N actors (processes, or Ray actors), supervised: an actor
       that dies is restarted at once (it resumes its slots), a trainer that dies is restarted from its
       last checkpoint up to ``rl.trainer.max_restarts`` times;
    6. when the trainer reaches ``rl.total_steps``: actors stop, the held-out reward of the final policy
       (``eval_after.json``), ``result.json`` and the report (``report.html``).

Each role is the same program a user can start alone on another machine (`lagoon rl trainer|actor|serve`):
they meet only through the weight store, the servers' HTTP API and the Iceberg table. The run is
resumable — run it again after an interruption and it continues; once ``result.json`` exists it is a
no-op that returns the result.

Run directory: ``config.toml`` (the resolved config the roles read), ``metrics.jsonl``/``events.jsonl``
(trainer and supervisor), ``checkpoints/``, ``weights/`` (published versions and ``updates.jsonl``),
``trajectories/`` (the Iceberg catalog and warehouse), ``actors/`` (per-actor group logs), ``logs/``
(each process's output), ``sft/`` (the warm-up), ``servers.json``, ``pids.json`` (the roles' process ids),
``eval_before.json``/``eval_after.json``, ``result.json``, ``report.html``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lagoon.errors import LagoonError
from lagoon.processes import alive, descendants, die_with_parent, kill_tree, wait_gone
from lagoon.rl.health import EXIT_INFRASTRUCTURE, InfrastructureError, read_health

RESULT = "result.json"
CONFIG_FILE = "config.toml"
ROLE_SECTIONS = ("model", "agent", "rl", "optim", "parallel")


def _write_json(path: Path, data: Any) -> None:
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(json.dumps(data, indent=2) + "\n")
    staging.replace(path)


def _sft_under_torchrun(config, run_dir: Path, say) -> Path:
    """The warm-up on `rl.trainer.processes` ranks (``lagoon rl sft`` under torchrun); its final checkpoint."""
    from lagoon.configio import dumps_toml, to_dict
    from lagoon.train import checkpoint as ckpt

    sft = config.rl.sft
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "sft.toml"
    data = to_dict(config)
    config_path.write_text(dumps_toml({key: data[key] for key in ROLE_SECTIONS if key in data}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={config.rl.trainer.processes}", "-m", "lagoon", "rl", "sft", str(config_path),
               "--run-dir", str(run_dir)]
    say(f"sft: warm-up on {config.rl.trainer.processes} ranks (torchrun)")
    with (run_dir / "sft.log").open("w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True).returncode
    final = ckpt.checkpoints_root(run_dir / "sft") / ckpt.step_dir_name(sft.steps)
    if code != 0 or ckpt.verify(final) is not None:
        raise LagoonError(f"the supervised warm-up failed (exit {code}); see {run_dir / 'sft.log'}")
    return final


def _with_init(config, init_checkpoint: Path):
    from lagoon.config import LagoonConfig
    from lagoon.configio import from_dict, to_dict

    data = to_dict(config)
    data["rl"]["init_checkpoint"] = str(Path(init_checkpoint).resolve())
    return from_dict(LagoonConfig, data)


class Supervisor:
    """Starts the trainer and actors as processes (or Ray actors) and keeps them running."""

    def __init__(self, config, run_dir: Path, config_path: Path, urls: list[str], say):
        from lagoon.train.metrics import MetricsWriter

        self.config = config
        self.run_dir = run_dir
        self.config_path = config_path
        self.urls = urls
        self.say = say
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.events = MetricsWriter(run_dir, active=True)
        self.trainer: subprocess.Popen | None = None
        self.trainer_restarts = 0
        self.actors: dict[int, subprocess.Popen] = {}
        self.finished_actors: set[int] = set()
        self.ray = None

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen:
        handle = (self.logs / log_name).open("a")
        try:
            return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=die_with_parent)
        finally:
            handle.close()

    def _role(self, role: str, *extra: str) -> list[str]:
        servers = [arg for url in self.urls for arg in ("--server", url)]
        return ["-m", "lagoon", "rl", role, str(self.config_path), "--run-dir", str(self.run_dir), *servers, *extra]

    def start_trainer(self) -> None:
        processes = self.config.rl.trainer.processes
        if processes > 1:
            # torchrun that exits with the trainer's own code (`lagoon.launch`)
            command = [sys.executable, "-m", "lagoon", "launch", "--standalone", f"--nproc-per-node={processes}",
                       *self._role("trainer")[2:]]
        else:
            command = [sys.executable, *self._role("trainer")]
        self.trainer = self._spawn(command, "trainer.log")

    def start_actor(self, index: int) -> None:
        if self.ray is not None:
            self.ray.start(index)
        else:
            self.actors[index] = self._spawn([sys.executable, *self._role("actor", "--index", str(index))],
                                             f"actor-{index}.log")

    def write_pids(self) -> None:
        """``pids.json``: the process ids of this run's roles (for operators, and for the crash tests)."""
        pids = {"supervisor": os.getpid(), "trainer": self.trainer.pid if self.trainer else None,
                "actors": {str(i): p.pid for i, p in self.actors.items()}}
        _write_json(self.run_dir / "pids.json", pids)

    def start(self) -> None:
        self.start_trainer()
        if self.config.rl.actor.backend == "ray":
            from lagoon.configio import to_dict
            from lagoon.rl.ray_actors import RayActors

            self.ray = RayActors(self.config, to_dict(self.config), self.run_dir, self.urls)
        for index in range(self.config.rl.actor.num_actors):
            self.start_actor(index)
        self.write_pids()

    def check(self) -> bool:
        """Restart what died; True once the trainer has finished."""
        exited = {i: p.returncode for i, p in self.actors.items() if p.poll() is not None}
        if self.ray is not None:
            exited.update({i: (0 if error is None else 1) for i, error in self.ray.finished()})
        health = read_health(self.run_dir)
        for index, code in exited.items():
            self.actors.pop(index, None)
            stopped = health.get(f"actor-{index}", {}).get("stopped")
            if code == EXIT_INFRASTRUCTURE or (self.ray is not None and code != 0 and stopped):
                # Not a crash that a restart mends: its servers, sandbox or table keep failing (lagoon.rl.health).
                self.events.event("infra_stop", actor=index, exit_code=code, reason=stopped)
                raise InfrastructureError(stopped or f"actor-{index} stopped on infrastructure failures; see "
                                                     f"{self.logs / f'actor-{index}.log'}")
            # Exit 0: the actor ran out of slots or saw the trainer finish. Anything else is a crash.
            if code != 0 and self.trainer is not None and self.trainer.poll() is None:
                self.events.event("actor_restart", actor=index, exit_code=code)
                self.say(f"actor-{index} exited with code {code}; restarting it")
                self.start_actor(index)
                self.write_pids()
            else:
                self.finished_actors.add(index)
        code = self.trainer.poll() if self.trainer is not None else None
        if code is None:
            return False
        if code == 0:
            return True
        if code == EXIT_INFRASTRUCTURE:
            tail = (self.logs / "trainer.log").read_text().strip().splitlines()
            raise InfrastructureError(next((line.removeprefix("lagoon: error: ") for line in reversed(tail)
                                            if line.startswith("lagoon: error: ")), "the trainer stopped on "
                                           f"infrastructure failures; see {self.logs / 'trainer.log'}"))
        if self.trainer_restarts >= self.config.rl.trainer.max_restarts:
            tail = (self.logs / "trainer.log").read_text()[-600:]
            raise LagoonError(f"the trainer failed {self.trainer_restarts + 1} times (exit {code}); "
                              f"see {self.logs / 'trainer.log'}: ...{tail.strip()[-250:]}")
        self.trainer_restarts += 1
        self.events.event("trainer_restart", exit_code=code)
        self.say(f"trainer exited with code {code}; restarting it from its last checkpoint")
        self.start_trainer()
        self.write_pids()
        return False

    def stop(self) -> None:
        if self.ray is not None:
            self.ray.stop()
        processes = [*self.actors.values(), *([self.trainer] if self.trainer else [])]
        # Each tree whole: a trainer under torchrun has ranks in sessions of their own.
        trees = {process.pid: [process.pid, *descendants(process.pid)] for process in processes}
        for process in processes:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 60
        for process in processes:
            try:
                process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            left = [pid for pid in trees[process.pid] if alive(pid)]
            for pid in left:
                kill_tree(pid)
            if left:
                process.wait()
                wait_gone(left, timeout_s=30)
        self.actors = {}
        self.events.close()


def _trainer_version(run_dir: Path) -> tuple[int, float | None]:
    from lagoon.train.metrics import read_jsonl

    rows = read_jsonl(run_dir / "metrics.jsonl")
    if not rows:
        return 0, None
    return int(rows[-1]["step"]), rows[-1].get("reward_mean")


def _terminate(signum, frame):
    """SIGTERM/SIGHUP: unwind like Ctrl-C, so every server, trainer and actor is stopped on the way out."""
    raise KeyboardInterrupt


def run(config, run_dir: str | Path, say=print) -> dict[str, Any]:
    """Run (or resume) the whole RL pipeline in `run_dir`; returns the result (see the module docstring)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from lagoon.configio import dumps_toml, to_dict
    from lagoon.rl.evaluate import evaluate_checkpoint, evaluate_servers
    from lagoon.rl.servers import LocalServers
    from lagoon.rl.store import TrajectoryStore
    from lagoon.weights.publish import read_latest, segment_root, store_root

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / RESULT).is_file():
        say(f"{run_dir} has finished already ({RESULT}); nothing to do")
        return json.loads((run_dir / RESULT).read_text())
    started = time.perf_counter()
    rl = config.rl
    if rl.init_checkpoint and not Path(rl.init_checkpoint).is_dir():
        raise LagoonError(f"rl.init_checkpoint {rl.init_checkpoint} is not a directory")
    # What "before RL" measures: the policy RL starts from, which the warm-up (when there is one) has trained.
    start_policy = "after the SFT warm-up" if rl.sft.steps else "the initial checkpoint"
    if rl.sft.steps:
        from lagoon.rl.sft import warmup

        # From scratch with its own tokenizer, or fine-tuning rl.init_checkpoint when one is given; on as many
        # ranks as the trainer gets.
        if rl.trainer.processes > 1:
            final = _sft_under_torchrun(config, run_dir, say)
        else:
            final = warmup(config, run_dir, say)
        config = _with_init(config, final)
        rl = config.rl
    elif not rl.init_checkpoint:
        raise LagoonError("rl.init_checkpoint is empty and rl.sft.steps is 0: there is no policy to start from")
    config_path = run_dir / CONFIG_FILE
    # The sections the roles read; the rest of a pipeline config is no business of theirs.
    data = to_dict(config)
    config_path.write_text(dumps_toml({key: data[key] for key in ROLE_SECTIONS if key in data}))
    TrajectoryStore(rl.table, run_dir)

    if rl.servers.urls:
        servers = None
    elif rl.servers.engine == "vllm":
        from lagoon.rl.vllm_servers import VLLMServers

        servers = VLLMServers(config, run_dir)
    else:
        servers = LocalServers(config, run_dir)
    supervisor = None
    previous = {sig: signal.signal(sig, _terminate) for sig in (signal.SIGTERM, signal.SIGHUP)}
    result: dict[str, Any] = {"run_dir": str(run_dir), "total_steps": rl.total_steps}
    rl_seconds = 0.0
    try:
        urls = rl.servers.urls or servers.start()
        if rl.servers.urls and rl.servers.engine == "vllm":
            from lagoon.rl.vllm_servers import sync_servers

            sync_servers(config, run_dir, urls)   # servers started elsewhere get the run's current weights first
        say(f"servers ({rl.servers.engine}): {', '.join(urls)}")
        tokenizer_dir = Path(rl.tokenizer or rl.init_checkpoint)
        before_path = run_dir / "eval_before.json"
        if rl.eval.num_tasks and not before_path.is_file():
            latest = read_latest(store_root(rl.weights, run_dir))
            if latest is None or latest["version"] == 0:
                before = evaluate_servers(config, urls, tokenizer_dir)
            else:
                before = evaluate_checkpoint(config, Path(rl.init_checkpoint))
            before["policy"] = start_policy
            _write_json(before_path, before)
            say(f"held-out reward before RL ({start_policy}): {before['reward_mean']:.3f} ({before['episodes']} episodes)")
        supervisor = Supervisor(config, run_dir, config_path, urls, say)
        supervisor.start()
        rl_started = time.monotonic()
        time_up = False
        columns = [TextColumn("[bold]RL[/bold] version {task.completed:.0f}/{task.total:.0f}"), BarColumn(),
                   TextColumn("{task.fields[reward]}"), TimeElapsedColumn()]
        with Progress(*columns, transient=False) as progress:
            bar = progress.add_task("rl", total=rl.total_steps, reward="")
            while not supervisor.check():
                dead = servers.dead() if servers is not None else []
                if dead:
                    # Its in-flight episodes end as errors (dropped, not appended); everything committed stays in
                    # the table and the trainer's checkpoint, so rerunning `lagoon rl` resumes the run.
                    raise LagoonError(f"the inference server at {dead[0].url} exited with code "
                                      f"{dead[0].process.returncode} (see {dead[0].log}); rerun to resume")
                if rl.time_limit_s and not time_up and time.monotonic() - rl_started > rl.time_limit_s:
                    time_up = True
                    say(f"time limit of {rl.time_limit_s:.0f} s reached: stopping the trainer")
                    supervisor.events.event("time_limit", seconds=rl.time_limit_s)
                    supervisor.trainer.terminate()   # it finishes its step, checkpoints and exits 0
                version, reward = _trainer_version(run_dir)
                progress.update(bar, completed=version,
                                reward="" if reward is None else f"batch reward {reward:.3f}")
                time.sleep(0.5)
            version, reward = _trainer_version(run_dir)
            progress.update(bar, completed=version)
        rl_seconds = time.monotonic() - rl_started
        supervisor.stop()
        supervisor = None
        if rl.eval.num_tasks:
            after = evaluate_servers(config, urls, tokenizer_dir)
            _write_json(run_dir / "eval_after.json", after)
            say(f"held-out reward after RL: {after['reward_mean']:.3f} ({after['episodes']} episodes)")
            result["eval_before"] = json.loads(before_path.read_text())
            result["eval_after"] = after
    finally:
        if supervisor is not None:
            supervisor.stop()
        if servers is not None:
            servers.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if rl.weights.transfer == "shm":
            # The RAM copy of the weights goes with the run (finished or interrupted): a resumed run starts
            # its servers from the initial checkpoint and the trainer pushes its own weights on start.
            shutil.rmtree(store_root(rl.weights, run_dir), ignore_errors=True)
        # Shared-memory segments of a trainer that did not get to remove them itself.
        shutil.rmtree(segment_root(run_dir), ignore_errors=True)
    result["version"] = _trainer_version(run_dir)[0]
    result["rl_s"] = rl_seconds
    result["wall_s"] = time.perf_counter() - started
    _write_json(run_dir / RESULT, result)
    try:
        from lagoon.report import build_report

        result["report"] = str(build_report(run_dir))
    except Exception as error:  # the run's results stand without the page
        say(f"report: {error}")
    return result
