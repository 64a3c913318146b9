"""Small builders shared by the RL tests."""

from __future__ import annotations

import datetime

from lagoon.rl.trajectory import Trajectory, Turn, group_id_of, make_trajectory_id


def make_trajectory(run_id: str, epoch: int, task: int, attempt: int, reward: float = 1.0, version: int = 0,
                    actor_id: str = "actor-0", prompt: list[int] | None = None) -> Trajectory:
    """A two-turn token-in/token-out episode with made-up but consistent token ids and logprobs."""
    prompt = prompt or [2, 5, 40 + task % 50, 41, 6, 23]
    first = [60 + attempt, 61, 24]
    observation = [7, 70, 8, 23]          # appended after the first completion (token-in/token-out)
    second = [62, 63 + attempt % 3, 24]
    task_id = f"arith-code/{task}"
    now = datetime.datetime.now(datetime.timezone.utc)
    return Trajectory(
        trajectory_id=make_trajectory_id(run_id, epoch, task_id, attempt), run_id=run_id,
        group_id=group_id_of(run_id, epoch, task_id), task_set="arith-code", task_id=task_id, epoch=epoch,
        attempt=attempt, actor_id=actor_id,
        turns=[Turn(prompt, first, [-0.5, -0.25, -0.1], [version]),
               Turn(observation, second, [-0.7, -0.2, -0.05], [version] * 3)],
        reward=reward, grader={"expected": "42", "got": "42" if reward else "41"}, exit_reason="answered",
        timings={"generation": 0.5, "sandbox": 0.1}, started_at=now, finished_at=now)


def make_group(run_id: str, epoch: int, task: int, size: int = 4, version: int = 0,
               actor_id: str = "actor-0") -> list[Trajectory]:
    return [make_trajectory(run_id, epoch, task, a, reward=float(a % 2), version=version, actor_id=actor_id)
            for a in range(size)]


def tiny_checkpoint(path, vocab_size: int = 128, seed: int = 0):
    """A small random Laguna checkpoint (two layers) in the Hugging Face layout."""
    import torch

    from lagoon.model import LagunaForCausalLM, preset_config, save_pretrained

    torch.manual_seed(seed)
    model = LagunaForCausalLM(preset_config("tiny", num_hidden_layers=2, vocab_size=vocab_size))
    return save_pretrained(model, path)


def rl_config(init_checkpoint, **overrides):
    """A validated config for trainer tests: small batches, no servers, weights written to files."""
    from lagoon.config import load_config

    base = {"rl": {"init_checkpoint": str(init_checkpoint), "total_steps": 3,
                   "tasks": {"group_size": 4},
                   "trainer": {"groups_per_step": 2, "max_staleness": 100, "checkpoint_every": 2,
                               "poll_interval_s": 0.05, "device": "cpu"},
                   "optim": {"name": "adamw", "lr": 1e-3, "adamw_lr": 1e-3, "weight_decay": 0.0,
                             "adamw_betas": [0.9, 0.99]},
                   "weights": {"transfer": "files"}}}
    return load_config(None, [f"{k}={v!r}" if isinstance(v, str) else f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                              for k, v in overrides.items()], base=base)
