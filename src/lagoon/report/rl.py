"""Report sections of an asynchronous RL run (`lagoon rl`): reward, staleness, train–inference mismatch and
weight-sync times. They read the run directory's own files — ``metrics.jsonl`` (the trainer), ``actors/*.jsonl``
(every finished group, kept or filtered), ``weights/updates.jsonl``, ``eval_before.json``/``eval_after.json`` —
and show nothing for runs that have none of them. Several runs (e.g. a benchmark's async and sync runs) are
drawn side by side.
"""

from __future__ import annotations

import json

import numpy as np

from lagoon.report.blocks import Section, Table, Text, new_figure, render
from lagoon.report.runs import Run
from lagoon.train.metrics import read_jsonl


def _is_rl(run: Run) -> bool:
    return any("staleness_hist" in row for row in run.metrics) or (run.path / "actors").is_dir()


def _name(run: Run) -> str:
    return run.path.name if run.name == "." else run.name


def _groups(run: Run) -> list[dict]:
    """Every finished group of every actor, in time order."""
    rows = []
    for path in sorted((run.path / "actors").glob("*.jsonl")):
        rows += [r for r in read_jsonl(path) if r.get("type") == "group"]
    return sorted(rows, key=lambda r: r["time"])


def _eval(run: Run, which: str) -> dict | None:
    path = run.path / f"eval_{which}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _updates(run: Run) -> list[dict]:
    return read_jsonl(run.path / "weights" / "updates.jsonl")


def _rolling(values: list[float], window: int) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return values
    window = max(1, min(window, len(values)))
    kernel = np.ones(window)
    return np.convolve(values, kernel, mode="full")[: len(values)] / np.convolve(np.ones_like(values), kernel,
                                                                                    mode="full")[: len(values)]


def summary_section(runs: list[Run]) -> Section | None:
    runs = [r for r in runs if _is_rl(r)]
    if not runs:
        return None
    header = ["run", "versions", "held-out reward: start of RL → after", "episodes", "groups kept / run",
              "trajectories / min", "staleness (mean, max)", "dropped stale", "weight sync (median s, GB/s)"]
    rows = []
    for run in runs:
        groups = _groups(run)
        episodes = sum(len(g["rewards"]) for g in groups)
        minutes = (groups[-1]["time"] - groups[0]["time"]) / 60 if len(groups) > 1 else 0.0
        before, after = _eval(run, "before"), _eval(run, "after")
        evals = "–"
        if before and after:
            evals = f"{before['reward_mean']:.3f} → {after['reward_mean']:.3f} ({after['episodes']} episodes each)"
        staleness = [m["staleness_mean"] for m in run.metrics if "staleness_mean" in m]
        worst = max((m["staleness_max"] for m in run.metrics if "staleness_max" in m), default=None)
        syncs = [u["sync_s"] for u in _updates(run) if "sync_s" in u]
        rates = [u["gb_per_s"] for u in _updates(run) if "gb_per_s" in u]
        rows.append([
            _name(run), str(int(run.last("step") or 0)), evals, str(episodes),
            f"{sum(g['kept'] for g in groups)} / {len(groups)}",
            f"{episodes / minutes:.1f}" if minutes else "–",
            f"{np.mean(staleness):.2f}, {worst}" if staleness else "–",
            str(int(sum(m.get("dropped_stale", 0) for m in run.metrics))),
            f"{np.median(syncs):.3f}, {np.median(rates):.3f}" if syncs else "–",
        ])
    starts = {(_eval(run, "before") or {}).get("policy") for run in runs} - {None}
    start = f" (the start of RL is {', '.join(sorted(starts))})" if starts else ""
    blocks: list = [Table(header, rows, "Held-out reward: the production harness on tasks no step trained on, with "
                                        f"the policy RL starts from{start} and with the final weights.")]
    infrastructure = _infrastructure_table(runs)
    if infrastructure is not None:
        blocks.append(infrastructure)
    return Section("RL summary", blocks)


def _infrastructure_table(runs: list[Run]) -> Table | None:
    """Per actor: episodes, the model's own failures, and infrastructure failures by kind (`lagoon.rl.health`)."""
    from lagoon.rl.health import INFRA_KINDS, read_health

    rows = []
    for run in runs:
        for actor, health in read_health(run.path).items():
            infra = health.get("infra", {})
            rows.append([_name(run), actor, str(health.get("episodes", 0)), str(health.get("model_failures", 0)),
                         *[str(infra.get(kind, 0)) for kind in INFRA_KINDS], str(health.get("retries", 0)),
                         health.get("stopped") or "–"])
    if not rows:
        return None
    return Table(["run", "actor", "episodes", "model failures", *[f"{kind} failures" for kind in INFRA_KINDS],
                  "retries", "stopped"], rows,
                 "Episodes that ran to the model's conclusion, those of them that ended without an answer (the model's "
                 "failures, trained on), and infrastructure failures apart from them: the inference server, the "
                 "sandbox, the harness, and appends to the trajectory table (every failed attempt, retries included).")


def reward_section(runs: list[Run]) -> Section | None:
    runs = [r for r in runs if _is_rl(r)]
    if not runs:
        return None
    figure, axes = new_figure(2, height=3.4)
    drew = False
    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        groups = _groups(run)
        if groups:
            start = groups[0]["time"] - groups[0].get("elapsed_s", 0.0)
            minutes = [(g["time"] - start) / 60 for g in groups]
            rewards = [g["reward_mean"] for g in groups]
            axes[0].plot(minutes, _rolling(rewards, 25), color=color, label=_name(run), linewidth=1.3)
            axes[0].scatter(minutes, rewards, color=color, s=4, alpha=0.15)
            drew = True
        steps, values = run.series("reward_mean")
        if steps:
            axes[1].plot(steps, _rolling(values, 5), color=color, label=_name(run), linewidth=1.3)
            axes[1].plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
            drew = True
        for which, marker in (("before", "o"), ("after", "s")):
            result = _eval(run, which)
            if result is not None and steps:
                axes[1].scatter([0 if which == "before" else steps[-1]], [result["reward_mean"]], color=color,
                                marker=marker, s=40, zorder=3, edgecolors="black",
                                label=f"held-out {which}" if index == 0 else None)
    if not drew:
        return None
    axes[0].set_xlabel("minutes since the actors started")
    axes[0].set_ylabel("episode reward (all groups, rolling mean)")
    axes[1].set_xlabel("trainer step (policy version)")
    axes[1].set_ylabel("reward of the trained batch")
    for axis in axes:
        axis.set_ylim(-0.02, 1.02)
        axis.legend(fontsize=7)
    caption = ("Left: the mean reward of every group the actors finished (filtered ones included), against wall "
               "clock. Right: the trainer's batches (kept groups only), with the held-out reward at the start of RL "
               "(circle; after the SFT warm-up when there is one) and after it (square).")
    return Section("Reward", [render(figure, caption)])


def staleness_section(runs: list[Run]) -> Section | None:
    runs = [r for r in runs if any("staleness_hist" in m for m in r.metrics)]
    if not runs:
        return None
    figure, axes = new_figure(2, height=3.0)
    width = 0.8 / len(runs)
    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        totals: dict[int, int] = {}
        for row in run.metrics:
            for key, count in (row.get("staleness_hist") or {}).items():
                totals[int(key)] = totals.get(int(key), 0) + int(count)
        keys = sorted(totals)
        axes[0].bar(np.asarray(keys) + index * width, [totals[k] for k in keys], width=width, color=color,
                    label=_name(run))
        steps, values = run.series("staleness_mean")
        axes[1].plot(steps, values, color=color, label=_name(run), linewidth=1.2)
        dropped_steps, dropped = run.series("dropped_stale")
        if any(dropped):
            axes[1].scatter([s for s, d in zip(dropped_steps, dropped) if d], [0] * sum(1 for d in dropped if d),
                            color=color, marker="x", label="dropped stale data")
    axes[0].set_xlabel("staleness (policy versions behind the trainer)")
    axes[0].set_ylabel("trajectories trained on")
    axes[1].set_xlabel("trainer step")
    axes[1].set_ylabel("mean staleness of the batch")
    for axis in axes:
        axis.legend(fontsize=7)
    return Section("Staleness", [render(figure, "How far behind the trainer the sampling policy was, for every "
                                                "trajectory trained on; admission control bounds it by η.")])


def mismatch_section(runs: list[Run]) -> Section | None:
    runs = [r for r in runs if any("mismatch_kl" in m for m in r.metrics)]
    if not runs:
        return None
    figure, axes = new_figure(2, height=3.0)
    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        for key, style, label in (("mismatch_kl", "-", "all tokens"), ("mismatch_kl_fresh", "--", "current version only")):
            steps, values = run.series(key)
            if steps:
                axes[0].plot(steps, np.maximum(values, 1e-12), color=color, linestyle=style, linewidth=1.1,
                             label=f"{_name(run)}: {label}")
        for key, style, label in (("clip_high_frac", "-", "clipped high"), ("clip_low_frac", ":", "clipped low")):
            steps, values = run.series(key)
            if steps:
                axes[1].plot(steps, values, color=color, linestyle=style, linewidth=1.1, label=f"{_name(run)}: {label}")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("trainer step")
    axes[0].set_ylabel("KL(μ ‖ π), k3 estimate")
    axes[1].set_xlabel("trainer step")
    axes[1].set_ylabel("fraction of tokens")
    for axis in axes:
        axis.legend(fontsize=7)
    caption = ("Train–inference mismatch: KL between the sampler's distribution μ and the trainer's π on the trained "
               "tokens. Over all tokens it includes staleness; over tokens the trainer's current version sampled it "
               "is the numerical mismatch alone. Right: CISPO's clipped IS weights.")
    return Section("Train–inference mismatch and clipping", [render(figure, caption)])


def weight_sync_section(runs: list[Run]) -> Section | None:
    runs = [r for r in runs if _updates(r)]
    if not runs:
        return None
    figure, axes = new_figure(2, height=3.0)
    lines = []
    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        updates = _updates(run)
        versions = [u["version"] for u in updates]
        axes[0].plot(versions, [u["sync_s"] for u in updates], color=color, marker="o", markersize=2.5,
                     linewidth=1.0, label=_name(run))
        axes[1].plot(versions, [u["gb_per_s"] for u in updates], color=color, marker="o", markersize=2.5,
                     linewidth=1.0, label=_name(run))
        kinds = sorted({u["transfer"] for u in updates})
        size = updates[-1]["bytes"] / 2**20
        lines.append(f"{_name(run)}: {len(updates)} updates by {', '.join(kinds)}, {size:.1f} MiB each, "
                     f"median {np.median([u['sync_s'] for u in updates]):.3f} s")
    axes[0].set_ylabel("seconds until every server serves it")
    axes[1].set_ylabel("GB/s")
    for axis in axes:
        axis.set_xlabel("policy version")
        axis.legend(fontsize=7)
    return Section("Weight sync", [render(figure, "Time from the trainer's new weights to every server serving "
                                                  "them, per version."), Text("; ".join(lines))])


SECTIONS = [summary_section, reward_section, staleness_section, mismatch_section, weight_sync_section]
