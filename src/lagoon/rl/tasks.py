"""The task stream actors pull from, the held-out evaluation tasks, and the agent settings of an RL run.

The stream is a sequence of *slots*: epoch e visits every task once, in a seeded order that changes
every epoch; slot s is (epoch s // num_tasks, the task at position s % num_tasks). Each slot is one group
of G attempts. Actor i of N takes the slots s ≡ i (mod N), so actors never compete for a slot, and an
actor restarted with the same index knows which slots were its own.

Task sets come from `lagoon.agent.tasks.load_task_set`: ``arith-code[:level=N]`` (generated; its ``n`` and
``seed`` default to ``[rl.tasks] num_tasks`` and ``seed``), ``pybugs``, or a directory of tasks. The
held-out evaluation uses arith-code tasks with ``[rl.eval] seed`` (disjoint from training); other task
sets are evaluated on themselves.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

from lagoon.errors import LagoonError


def _spec_with(spec: str, **defaults: int) -> str:
    from lagoon.agent.tasks import _parse_options

    name, _, options = spec.partition(":")
    if name != "arith-code":
        return spec
    parsed = _parse_options(options, spec)
    for key, value in defaults.items():
        parsed.setdefault(key, value)
    return name + ":" + ",".join(f"{k}={v}" for k, v in sorted(parsed.items()))


def training_tasks(config) -> list:
    from lagoon.agent.tasks import load_task_set

    tasks_config = config.rl.tasks
    tasks = load_task_set(_spec_with(tasks_config.task_set, n=tasks_config.num_tasks, seed=tasks_config.seed))
    if not tasks:
        raise LagoonError(f"task set {tasks_config.task_set!r} is empty")
    return tasks


def held_out_tasks(config) -> list:
    from lagoon.agent.tasks import load_task_set

    spec = config.rl.tasks.task_set
    if spec.partition(":")[0] == "arith-code":
        name, _, options = spec.partition(":")
        options = ",".join(p for p in options.split(",") if p and not p.startswith(("n=", "seed=")))
        spec = _spec_with(f"{name}:{options}" if options else name, n=config.rl.eval.num_tasks, seed=config.rl.eval.seed)
    tasks = load_task_set(spec)
    return tasks[: config.rl.eval.num_tasks] if config.rl.eval.num_tasks else []


def agent_config(config, temperature: float | None = None):
    """The run's `[agent]` settings, with the sampling temperature replaced when given."""
    agent = copy.deepcopy(config.agent)
    if temperature is not None:
        agent.sampling.temperature = temperature
    return agent


@dataclass(frozen=True)
class Slot:
    index: int
    epoch: int
    task: object


class TaskStream:
    """The slots of one run, in order."""

    def __init__(self, tasks: list, epochs: int, seed: int, shuffle: bool = True):
        self.tasks = tasks
        self.epochs = epochs
        self.seed = seed
        self.shuffle = shuffle
        self._orders: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return self.epochs * len(self.tasks)

    def order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self.tasks)))
            if self.shuffle:
                random.Random(f"lagoon-rl-tasks/{self.seed}/{epoch}").shuffle(order)
            self._orders[epoch] = order
        return self._orders[epoch]

    def slot(self, index: int) -> Slot:
        epoch, position = divmod(index, len(self.tasks))
        return Slot(index, epoch, self.tasks[self.order(epoch)[position]])

    def slots_of(self, actor: int, num_actors: int, start: int = 0):
        """This actor's slots from `start` on."""
        first = start + ((actor - start) % num_actors)
        for index in range(first, len(self), num_actors):
            yield self.slot(index)
