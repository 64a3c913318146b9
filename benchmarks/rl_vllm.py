"""Claims: stock vLLM serves lagoon's RL as a drop-in rollout engine (episodes per minute and weight-sync
seconds, vLLM vs lagoon's engine), and routing replay removes the expert-choice part of the train–inference
mismatch (mismatch KL and top-k disagreement, with and without replay).

Method. The demo's RL recipe (``configs/rl_demo.toml``) at small settings, from the same warmed-up checkpoint
(the recipe's SFT warm-up, once), one trainer step per ``--steps``, evaluation off. Rounds alternate the
engines (lagoon, vLLM, vLLM, lagoon, ...) so load on the shared machine hits both alike; each round is a
fresh ``lagoon.rl.run``. vLLM runs in its own environment (``make vllm-env``) with lagoon's plugin, one server
started once and reused by every vLLM round (its ~2-minute start is not part of the RL phase; lagoon's
server starts with each round, in seconds, also outside the RL phase). Reported per engine, median and
range over rounds: finished episodes per minute of the RL phase (trajectories in the table ÷ ``rl_s``) and
seconds per weight update (``updates.jsonl`` ``sync_s`` of versions ≥ 1): lagoon's
shared-memory transfer vs vLLM's native protocol over gloo (pause, start, packed update, finish, prefix-cache
reset, resume) plus its log-probability check.

Routing replay. vLLM 0.32 on CPU cannot return routed experts (its aux-output connector needs Model Runner V2,
which needs Triton, which vLLM disables on CPU), so replay is measured on lagoon's engine: one extra run with
``rl.trainer.routing_replay = true`` records experts per token; its table is then scored offline under the
policy version that sampled each turn, once routing freely and once replaying the recorded experts: k3
KL(μ‖π) over the sampled tokens and the share of (token, layer) pairs whose top-k set differs from the
engine's. Servers in fp32 compute exactly what the trainer does; ``--replay-dtype bfloat16`` servers (the
default here) route in bf16 while the trainer routes in fp32, the mismatch replay is meant to remove.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import record
from lagoon.config import load_config
from lagoon.train.metrics import read_jsonl


def rl_round(base, overrides: list[str], run_dir: Path) -> dict:
    from lagoon.configio import from_dict, to_dict
    from lagoon.config import LagoonConfig
    from lagoon.rl import run
    from lagoon.rl.config import TableConfig
    from lagoon.rl.store import TrajectoryStore

    shutil.rmtree(run_dir, ignore_errors=True)
    data = to_dict(base)
    config = load_config(None, overrides, base=data) if overrides else from_dict(LagoonConfig, data)
    result = run(config, run_dir, say=lambda *_: None)
    episodes = len(TrajectoryStore(TableConfig(), run_dir).read_all())
    # Updates to new versions only (not the start-up syncs of version 0 that vLLM servers get).
    syncs = [u["sync_s"] for u in read_jsonl(run_dir / "weights" / "updates.jsonl") if u["version"] >= 1]
    return {"episodes_per_min": episodes / (result["rl_s"] / 60), "episodes": episodes,
            "sync_s": statistics.median(syncs) if syncs else float("nan"), "rl_s": result["rl_s"]}


def replay_mismatch(run_dir: Path, lag: int = 0) -> dict:
    """k3 KL(μ‖π) and top-k disagreement over the run's table, without and with routing replay; π is the
    policy `lag` versions after the one that sampled (lag 1: an asynchronous trainer one version ahead)."""
    from lagoon.model import from_pretrained
    from lagoon.model.routing import topk_disagreement
    from lagoon.rl.config import TableConfig
    from lagoon.rl.loss import sequence_logprobs
    from lagoon.rl.replay import replay, sparse_rows
    from lagoon.rl.store import TrajectoryStore

    policies: dict[int, torch.nn.Module] = {}
    sums = {"kl_free": 0.0, "kl_replay": 0.0, "tokens": 0, "differ": 0.0, "pairs": 0}
    for trajectory in TrajectoryStore(TableConfig(), run_dir).read_all():
        for sequence in trajectory.sequences():
            versions = {v for v, m in zip(sequence.policy_versions, sequence.loss_mask) if m}
            if len(versions) != 1 or sequence.routed_experts is None:
                continue
            version = versions.pop() + lag
            path = run_dir / "weights" / f"v_{version:08d}"
            if not path.is_dir():
                continue
            policy = policies.setdefault(version, from_pretrained(path, dtype=torch.float32).eval())
            ids_1T = torch.tensor([sequence.token_ids])
            shape = next(r.shape for r in sequence.routed_experts if r is not None)
            experts = torch.full((1, len(sequence.token_ids), *shape), -1, dtype=torch.long)
            for t, row in enumerate(sequence.routed_experts):
                if row is not None:
                    experts[0, t] = torch.as_tensor(row.astype("int64"))
            mask = torch.tensor(sequence.loss_mask[1:] + [False])
            mu = torch.tensor(sequence.logprobs[1:] + [0.0])[mask]
            with torch.no_grad():
                free = sequence_logprobs(policy, ids_1T, None)[0][mask]
                with replay(policy, experts, True):
                    replayed = sequence_logprobs(policy, ids_1T, None)[0][mask]
            for key, pi in (("kl_free", free), ("kl_replay", replayed)):
                log_ratio = pi - mu
                sums[key] += float((log_ratio.exp() - 1 - log_ratio).sum())
            sums["tokens"] += int(mask.sum())
            differ, pairs = topk_disagreement(policy, ids_1T, sparse_rows(policy, experts))
            sums["differ"] += differ
            sums["pairs"] += pairs
    n = max(sums["tokens"], 1)
    return {"kl_free": sums["kl_free"] / n, "kl_replay": sums["kl_replay"] / n, "tokens": sums["tokens"],
            "topk_differ": sums["differ"] / max(sums["pairs"], 1), "pairs": sums["pairs"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/rl_demo.toml")
    parser.add_argument("--out", default="runs/bench_rl_vllm")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--replay-dtype", default="bfloat16")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    from lagoon.rl.sft import warmup
    from lagoon.rl.vllm_servers import VLLMServers

    out = Path(args.out)
    small = [f"rl.total_steps={args.steps}", "rl.time_limit_s=0", "rl.eval.num_tasks=0", "rl.trainer.groups_per_step=2",
             "rl.tasks.group_size=4", "rl.actor.concurrent_episodes=8", "rl.trainer.checkpoint_every=100",
             # Throughput, not learning: a briefly warmed-up policy often scores 0 on a whole group, which the
             # zero-variance filter would drop, leaving the trainer waiting.
             "rl.actor.filter_zero_variance=false", "rl.servers.startup_timeout_s=900",
             *args.overrides]
    base = load_config(args.config, small)
    init = warmup(base, out / "warmup", say=print)
    base = load_config(None, [f'rl.init_checkpoint="{init}"', "rl.sft.steps=0"], base=_dict(base))
    vllm_base = load_config(None, ['rl.servers.engine="vllm"'], base=_dict(base))
    servers = VLLMServers(vllm_base, out / "vllm-servers")
    started = time.perf_counter()
    servers.start()
    print(f"vLLM server up in {time.perf_counter() - started:.0f} s: {servers.urls}")
    rows: dict[str, list[dict]] = {"lagoon": [], "vllm": []}
    try:
        for index in range(args.rounds):
            order = ("lagoon", "vllm") if index % 2 == 0 else ("vllm", "lagoon")
            for engine in order:
                extra = [f"rl.servers.urls={json.dumps(servers.urls)}"] if engine == "vllm" else []
                row = rl_round(vllm_base if engine == "vllm" else base, extra, out / f"{engine}-{index}")
                rows[engine].append(row)
                print(engine, index, row)
    finally:
        servers.stop()
    replay_dir = out / "replay"
    rl_round(base, ["rl.trainer.routing_replay=true", f'rl.servers.dtype="{args.replay_dtype}"'], replay_dir)
    mismatch = replay_mismatch(replay_dir)
    stale = replay_mismatch(replay_dir, lag=1)
    print("replay", mismatch, "one version stale", stale)

    def summary(engine: str, key: str) -> tuple[float, float, float]:
        values = [r[key] for r in rows[engine]]
        return statistics.median(values), min(values), max(values)

    lines = ["| engine | episodes/min (median, range) | weight sync s/update (median, range) |", "|---|---|---|"]
    for engine in ("lagoon", "vllm"):
        e, s = summary(engine, "episodes_per_min"), summary(engine, "sync_s")
        lines.append(f"| {engine} | {e[0]:.1f} ({e[1]:.1f}–{e[2]:.1f}) | {s[0]:.3f} ({s[1]:.3f}–{s[2]:.3f}) |")
    ratio_e = summary("vllm", "episodes_per_min")[0] / summary("lagoon", "episodes_per_min")[0]
    ratio_s = summary("vllm", "sync_s")[0] / summary("lagoon", "sync_s")[0]
    lines += ["", f"vLLM ÷ lagoon: episodes/min {ratio_e:.2f}×, weight-sync seconds {ratio_s:.2f}× "
              f"({args.rounds} rounds each, interleaved, {args.steps} steps per round)", "",
              f"Routing replay (lagoon engine, {args.replay_dtype} servers, fp32 trainer; {mismatch['tokens']} sampled "
              f"tokens, {mismatch['pairs']} (token, layer) pairs): mismatch KL {mismatch['kl_free']:.3g} without "
              f"replay, {mismatch['kl_replay']:.3g} with; top-k sets differing from the engine's "
              f"{100 * mismatch['topk_differ']:.2f}% without replay, 0% with (replay uses the engine's sets). "
              f"Scored one version later (an asynchronous trainer one step ahead; {stale['tokens']} tokens): "
              f"KL {stale['kl_free']:.3g} without replay, {stale['kl_replay']:.3g} with; top-k differing "
              f"{100 * stale['topk_differ']:.2f}%."]
    if not args.no_record:
        record("RL rollouts on stock vLLM vs lagoon's engine; routing replay (rl)", lines)
    else:
        print("\n".join(lines))


def _dict(config) -> dict:
    from lagoon.configio import to_dict

    return to_dict(config)


if __name__ == "__main__":
    main()
