"""``lagoon agent run|eval|replay|tasks``.

``--model`` is either an OpenAI-compatible base URL (``http://localhost:11434/v1`` for Ollama,
``https://openrouter.ai/api/v1``, a vLLM or lagoon server) or a local checkpoint directory, for which
``lagoon serve`` is started in a subprocess on a free port. ``--mode auto`` talks chat to URLs and
token-in/token-out to checkpoints (the RL path); ``--mode tito`` against a URL needs ``--tokenizer``.
The API key is read from the environment variable named by ``--api-key-env`` (default OPENAI_API_KEY).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from lagoon.errors import LagoonError


def register(subparsers) -> None:
    agent = subparsers.add_parser("agent", help="run the code-as-action agent: one task, a whole set, or a replay")
    sub = agent.add_subparsers(dest="agent_command", metavar="ACTION", required=True)

    def model_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", required=True, metavar="URL_OR_CKPT",
                            help="OpenAI-compatible base URL, or a checkpoint directory (served by lagoon serve)")
        parser.add_argument("--model-name", default=None, help="model id at the endpoint (default: the first listed)")
        parser.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                            help="environment variable holding the API key (default OPENAI_API_KEY)")
        parser.add_argument("--mode", choices=["auto", "chat", "tito"], default="auto",
                            help="chat messages, or token-in/token-out (auto: chat for URLs, tito for checkpoints)")
        parser.add_argument("--tokenizer", default=None, metavar="DIR", help="tokenizer directory for --mode tito with a URL")
        parser.add_argument("--config", default=None, metavar="TOML", help="run config whose [agent] section to use")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override a config value, e.g. --set agent.budgets.max_steps=10 (repeatable)")
        parser.add_argument("--seed", type=int, default=None, help="sampling seed")
        parser.add_argument("--unsafe-local", action="store_true",
                            help="run the agent's code directly on this machine, without a sandbox")

    run = sub.add_parser("run", help="run one task and print the episode")
    run.add_argument("--task", required=True, metavar="T",
                     help="a task directory, a built-in task id (pybugs/NAME, arith-code/L1-s0-00003) or a set spec")
    run.add_argument("--out", default=None, metavar="DIR", help="keep the trajectory (and the workspace) here")
    model_options(run)
    run.set_defaults(handler=run_run)

    evaluate = sub.add_parser("eval", help="run a task set in parallel (resumable) and print a results table")
    evaluate.add_argument("--tasks", required=True, metavar="SET",
                          help="pybugs, arith-code[:n=..,level=..,seed=..], or a directory of tasks")
    evaluate.add_argument("--workers", type=int, default=1, help="episodes run at once")
    evaluate.add_argument("--out", required=True, metavar="DIR", help="results.jsonl and trajectories; rerun to resume")
    evaluate.add_argument("--limit", type=int, default=None, help="only the first N tasks")
    model_options(evaluate)
    evaluate.set_defaults(handler=run_eval)

    replay = sub.add_parser("replay", help="show a saved trajectory turn by turn (and optionally re-execute it)")
    replay.add_argument("trajectory", metavar="TRAJ", help="a trajectory .jsonl file")
    replay.add_argument("--execute", action="store_true",
                        help="re-run the recorded actions in a fresh sandbox and compare the observations")
    replay.add_argument("--task", default=None, metavar="T", help="the task, if not findable from the trajectory's id")
    replay.set_defaults(handler=run_replay)

    tasks = sub.add_parser("tasks", help="list a task set, or export it in the on-disk layout")
    tasks.add_argument("set", metavar="SET", help="pybugs, arith-code[:n=..,level=..,seed=..], or a directory")
    tasks.add_argument("--export", default=None, metavar="DIR", help="write every task as a task directory here")
    tasks.set_defaults(handler=run_tasks)


def find_task(spec: str):
    """A task from a directory, a built-in task id, or a set spec naming exactly one task."""
    from lagoon.agent.arith import generate_tasks
    from lagoon.agent.tasks import builtin_dir, load_task, load_task_set

    if Path(spec).is_dir():
        tasks = load_task_set(spec)
    elif spec.startswith("pybugs/") and (builtin_dir("pybugs") / spec.split("/", 1)[1]).is_dir():
        return load_task(builtin_dir("pybugs") / spec.split("/", 1)[1])
    elif spec.startswith("arith-code/"):
        try:
            level_part, seed_part, index_part = spec.split("/", 1)[1].split("-")
            level, seed, index = int(level_part[1:]), int(seed_part[1:]), int(index_part)
        except ValueError:
            raise LagoonError(f"{spec!r} is not an arith-code task id (like arith-code/L1-s0-00003)") from None
        return generate_tasks(n=index + 1, level=level, seed=seed)[index]
    else:
        tasks = load_task_set(spec)
    if len(tasks) != 1:
        raise LagoonError(f"{spec!r} names {len(tasks)} tasks; give one task (e.g. {tasks[0].id})")
    return tasks[0]


def _agent_config(args: argparse.Namespace):
    from lagoon.config import load_config

    overrides = list(args.overrides)
    if args.unsafe_local:
        overrides.append('agent.sandbox.backend="unsafe-local"')
    config = load_config(args.config, overrides).agent
    if config.sandbox.backend == "unsafe-local":
        print("lagoon: warning: the agent's code runs directly on this machine, without a sandbox", file=sys.stderr)
    return config


@contextlib.contextmanager
def open_policy(args: argparse.Namespace, log_dir: Path):
    """(policy client, tokenizer or None) for ``--model``; starts lagoon serve for a checkpoint."""
    from lagoon.agent.clients import ChatClient, CompletionsClient
    from lagoon.agent.local_server import LocalServer

    is_url = args.model.startswith(("http://", "https://"))
    if not is_url and not (Path(args.model) / "config.json").is_file():
        raise LagoonError(f"--model {args.model} is neither a URL nor a checkpoint directory (no config.json)")
    mode = args.mode if args.mode != "auto" else ("chat" if is_url else "tito")
    api_key = os.environ.get(args.api_key_env)
    tokenizer_dir = args.tokenizer or (None if is_url else args.model)
    tokenizer = None
    if mode == "tito":
        if tokenizer_dir is None:
            raise LagoonError("--mode tito with a URL needs --tokenizer DIR (the served model's tokenizer)")
        from lagoon.infer.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_dir(tokenizer_dir)
    with contextlib.ExitStack() as stack:
        base_url = args.model
        if not is_url:
            server = stack.enter_context(LocalServer(args.model, log_dir / "serve.log"))
            base_url = server.base_url
            print(f"serving {args.model} at {base_url} (log: {log_dir / 'serve.log'})")
        client = (ChatClient(base_url, args.model_name, api_key) if mode == "chat"
                  else CompletionsClient(base_url, args.model_name, api_key))
        yield client, tokenizer


def run_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from lagoon.agent.harness import run_episode

    task = find_task(args.task)
    config = _agent_config(args)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="lagoon-agent-run-"))
    out.mkdir(parents=True, exist_ok=True)
    with open_policy(args, out) as (policy, tokenizer):
        episode = run_episode(task, policy, config, tokenizer=tokenizer, trajectory_path=out / "trajectory.jsonl",
                              workspace=out / "workspace" if args.out else None, keep_workspace=bool(args.out),
                              seed=args.seed)
    print_episode(episode, Console())
    print(f"trajectory: {out / 'trajectory.jsonl'}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from rich.console import Console

    from lagoon.agent.evaluate import evaluate, results_table, summarize
    from lagoon.agent.tasks import load_task_set

    if args.workers < 1:
        raise LagoonError("--workers must be at least 1")
    tasks = load_task_set(args.tasks)[: args.limit]
    config = _agent_config(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open_policy(args, out) as (policy, tokenizer):
        results = evaluate(tasks, policy, config, out, workers=args.workers, tokenizer=tokenizer, seed=args.seed)
    Console().print(results_table(results, f"lagoon agent eval: {args.tasks} with {args.model}"))
    (out / "summary.json").write_text(json.dumps(summarize(results), indent=2) + "\n")
    print(f"results: {out / 'results.jsonl'}")
    return 0


def print_episode(episode, console) -> None:
    from rich.panel import Panel

    header = episode.header
    console.print(f"[bold]{header['task_id']}[/] · {header['mode']} · {header['model'].get('model')} · "
                  f"episode {header['episode_id'][:12]}")
    console.print(Panel(header["messages"][-1]["content"].strip(), title="task", expand=False))
    for turn in episode.turns:
        sample = f" · sample {turn['sample']}" if "sample" in turn else ""
        console.print(Panel(turn.get("completion_text", "").strip() or "(empty)",
                            title=f"turn {turn['index']} · model{sample}", expand=False, border_style="cyan"))
        if turn.get("observation") is not None:
            console.print(Panel(turn["observation"], title="observation", expand=False, border_style="green"))
        prefix = turn.get("prefix")
        if prefix and not prefix["ok"]:
            console.print(f"[yellow]prefix property broke ({prefix['reason']} at {prefix['position']}): "
                          "the next turn starts a new sample[/]")
    if episode.end is None:
        console.print("[red]the episode did not finish (no end record)[/]")
        return
    end = episode.end
    console.print(f"exit: [bold]{end['exit_reason']}[/] · reward {end['reward']} · {end['num_turns']} turns · "
                  f"{end['completion_tokens']} completion tokens · {end['timings']['total_s']:.1f} s")
    details = end.get("grade", {}).get("details", {})
    for key in ("fail_to_pass", "pass_to_pass"):
        if key in details:
            console.print(f"{key}: " + ", ".join(f"{t.split('::')[-1]} {v}" for t, v in details[key].items()))


def run_replay(args: argparse.Namespace) -> int:
    from rich.console import Console

    from lagoon.agent.trajectory import Episode

    episode = Episode.load(args.trajectory)
    console = Console()
    print_episode(episode, console)
    if not args.execute:
        return 0
    from lagoon.agent.replay import reexecute

    task = find_task(args.task or episode.task_id)
    mismatches = reexecute(episode, task)
    for index, recorded, now in mismatches:
        console.print(f"[red]turn {index}: the observation differs[/]\nrecorded: {recorded!r}\nnow:      {now!r}")
    console.print(f"re-executed {sum(1 for t in episode.turns if t.get('action', {}).get('kind') == 'code')} actions: "
                  f"{'all observations match' if not mismatches else f'{len(mismatches)} differ'}")
    return 1 if mismatches else 0


def run_tasks(args: argparse.Namespace) -> int:
    from lagoon.agent.tasks import load_task_set

    tasks = load_task_set(args.set)
    for task in tasks:
        first_line = task.instruction.strip().splitlines()[0] if task.kind == "answer" else task.metadata.get("category", "")
        print(f"{task.id}\t{task.kind}\t{first_line}")
    if args.export:
        for task in tasks:
            task.save(Path(args.export) / task.id.split("/")[-1])
        print(f"exported {len(tasks)} tasks to {args.export}")
    return 0
