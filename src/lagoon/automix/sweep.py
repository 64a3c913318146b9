"""The proxy sweep: a plan of mixtures, one proxy run per mixture, and the Parquet table of results.

    OUT/plan.json                 leaves, token counts, prior, caps, budgets, the sampled mixtures
    OUT/proxies/pNNN/             each proxy's `lagoon train` run directory (+ automix_result.json)
    OUT/sweep.parquet             one row per finished proxy: weight/LEAF columns → bpb/GROUP columns
    OUT/events.jsonl              one line per proxy finished (JSON), for progress monitoring

The plan is written once; a later invocation checks that the shard set, the sampling settings and the
proxy's training config are unchanged (anything else, such as the surrogate or the objective, may
change freely), then trains only the proxies without a result. Sampling is prefix-stable, so raising
`num_proxies` extends a finished sweep instead of invalidating it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lagoon.automix.backends import execute, read_result, record_result
from lagoon.automix.runs import RunSpec
from lagoon.automix.sampling import sample_mixtures
from lagoon.automix.space import MixtureSpace
from lagoon.errors import LagoonError

PLAN_FILE = "plan.json"
TABLE_FILE = "sweep.parquet"
EVENTS_FILE = "events.jsonl"
WEIGHT_PREFIX = "weight/"
BPB_PREFIX = "bpb/"


@dataclass
class Plan:
    """What the sweep trains, fixed when it starts."""

    space: MixtureSpace
    groups: dict[str, list[str]]
    """Capability group → its leaves (from the shard set)."""
    proxy_tokens: int
    mixtures: np.ndarray
    """[N, K] one mixture per proxy."""
    identity: dict[str, Any]
    """What must not change for the sweep's results to stay valid."""
    domains: list[str]
    """Domain of every leaf (leaves are domain × quality bucket)."""

    def to_dict(self) -> dict[str, Any]:
        return {"leaves": list(self.space.leaves), "leaf_tokens": list(self.space.leaf_tokens),
                "target_tokens": self.space.target_tokens, "max_epochs": self.space.max_epochs,
                "prior": self.space.prior.tolist(), "caps": self.space.caps.tolist(), "groups": self.groups,
                "proxy_tokens": self.proxy_tokens, "leaf_fraction": self.leaf_fraction,
                "mixtures": self.mixtures.tolist(), "identity": self.identity, "domains": self.domains}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        space = MixtureSpace(tuple(data["leaves"]), tuple(data["leaf_tokens"]), data["target_tokens"],
                             data["max_epochs"])
        domains = data.get("domains") or [leaf.split("/")[0] for leaf in data["leaves"]]
        return cls(space, data["groups"], data["proxy_tokens"], np.asarray(data["mixtures"], dtype=np.float64),
                   data["identity"], domains)

    @property
    def leaf_fraction(self) -> float:
        return self.proxy_tokens / self.space.target_tokens


def sample_plan_mixtures(space: MixtureSpace, count: int, seed: int, include_natural: bool,
                         concentration: tuple[float, float], temperature: float, min_weight: float) -> np.ndarray:
    """[count, K] the sweep's mixtures: the natural mixture first (optionally), then Dirichlet draws."""
    rng = np.random.default_rng(seed)
    drawn = count - 1 if include_natural else count
    sampled_NK = sample_mixtures(space, drawn, rng, concentration, temperature, min_weight)
    if include_natural:
        sampled_NK = np.concatenate([space.prior[None], sampled_NK])
    return sampled_NK


def settle_plan(out_dir: Path, fresh: Plan) -> Plan:
    """Write `fresh` as OUT/plan.json, or check an existing plan against it and keep the existing one.

    A stored plan with fewer mixtures is extended when the mixtures it has are the start of `fresh`'s.
    """
    path = out_dir / PLAN_FILE
    if path.is_file():
        stored = Plan.from_dict(json.loads(path.read_text()))
        changed = sorted(key for key in set(stored.identity) | set(fresh.identity)
                         if stored.identity.get(key) != fresh.identity.get(key))
        if changed:
            raise LagoonError(f"{out_dir} holds a sweep made with a different {', '.join(changed)}; "
                              "use a new --out directory, or restore the settings it was made with")
        if len(stored.mixtures) >= len(fresh.mixtures):
            assert np.allclose(stored.mixtures[: len(fresh.mixtures)], fresh.mixtures)
            return Plan(stored.space, stored.groups, stored.proxy_tokens, stored.mixtures[: len(fresh.mixtures)],
                        stored.identity, stored.domains)
        assert np.allclose(fresh.mixtures[: len(stored.mixtures)], stored.mixtures), "sampling is not prefix-stable"
    write_json(path, fresh.to_dict())
    return fresh


def proxy_dir(out_dir: Path, index: int) -> Path:
    return out_dir / "proxies" / f"p{index:03d}"


def proxy_specs(out_dir: Path, plan: Plan, proxy_config: dict[str, Any], params: dict[str, int]) -> list[RunSpec]:
    """One `RunSpec` per planned mixture (all of them; finished ones are filtered by `run_sweep`)."""
    specs = []
    for index, weights_K in enumerate(plan.mixtures):
        config = json.loads(json.dumps(proxy_config))
        config["data"]["weights"] = {leaf: float(w) for leaf, w in zip(plan.space.leaves, weights_K) if w > 0}
        config["data"]["mixture"] = ""
        specs.append(RunSpec(f"proxy {index}", str(proxy_dir(out_dir, index)), config, plan.leaf_fraction, params))
    return specs


def run_specs(specs: list[RunSpec], automix: Any, progress_label: str, events: Path,
              show_progress: bool = True) -> dict[str, dict[str, Any]]:
    """Train every spec without a recorded result, recording each as it finishes; returns run_dir → result."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    results = {spec.run_dir: read_result(spec.run_dir) for spec in specs}
    pending = [spec for spec in specs if results[spec.run_dir] is None]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        task = progress.add_task(progress_label, total=len(specs), completed=len(specs) - len(pending))
        for spec, result in execute(pending, automix):
            record_result(spec.run_dir, result)
            results[spec.run_dir] = result
            _append_event(events, {"event": "finished", "name": spec.name, "run_dir": spec.run_dir,
                                   "bpb": result["bpb"], "wall_s": result["wall_s"], "time": time.time()})
            progress.update(task, advance=1, description=f"{progress_label} ({spec.name} done)")
    return results


def run_sweep(out_dir: Path, plan: Plan, proxy_config: dict[str, Any], proxy_params: dict[str, int], automix: Any,
              show_progress: bool = True) -> "Any":
    """Train the missing proxies, then (re)write OUT/sweep.parquet from every proxy's result."""
    import pyarrow.parquet as pq

    specs = proxy_specs(out_dir, plan, proxy_config, proxy_params)
    results = run_specs(specs, automix, "proxy sweep", out_dir / EVENTS_FILE, show_progress)
    rows = [results[spec.run_dir] for spec in specs]
    path = out_dir / TABLE_FILE
    if path.is_file() and pq.read_metadata(path).num_rows == len(rows):
        return pq.read_table(path)  # nothing new: keep the table (and its timestamp) as it is
    return write_table(out_dir, plan, rows)


def write_table(out_dir: Path, plan: Plan, results: list[dict[str, Any] | None]):
    """The sweep table (pyarrow), one row per finished proxy, written atomically to OUT/sweep.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(index, result) for index, result in enumerate(results) if result is not None]
    groups = sorted(plan.groups)
    columns: dict[str, list[Any]] = {"proxy": [i for i, _ in rows]}
    for k, leaf in enumerate(plan.space.leaves):
        columns[WEIGHT_PREFIX + leaf] = [float(plan.mixtures[i, k]) for i, _ in rows]
    for group in groups:
        columns[BPB_PREFIX + group] = [float(r["bpb"][group]) if group in r["bpb"] else None for _, r in rows]
    for key in ("train_loss", "steps", "tokens", "wall_s", "params_total", "params_active", "flops"):
        columns[key] = [r.get(key) for _, r in rows]
    table = pa.table(columns)
    path = out_dir / TABLE_FILE
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, staging)
    staging.replace(path)
    return table


def read_table(out_dir: Path, plan: Plan) -> tuple[np.ndarray, dict[str, np.ndarray], list[int]]:
    """([N, K] weights, group → [N] bits per byte, proxy indices) of the finished proxies."""
    import pyarrow.parquet as pq

    path = out_dir / TABLE_FILE
    if not path.is_file():
        raise LagoonError(f"{path} does not exist; run `lagoon automix run` first")
    table = pq.read_table(path).to_pydict()
    weights_NK = np.array([table[WEIGHT_PREFIX + leaf] for leaf in plan.space.leaves], dtype=np.float64).T
    bpb = {name[len(BPB_PREFIX):]: np.asarray(values, dtype=np.float64)
           for name, values in table.items() if name.startswith(BPB_PREFIX)}
    return weights_NK, bpb, list(table["proxy"])


def _append_event(path: Path, event: dict[str, Any]) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(event) + "\n")


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    staging.write_text(json.dumps(data, indent=1))
    staging.replace(path)
