"""The stages of the main job. Each reads the pipeline config plus what earlier stages wrote, writes into
its own folder of the run directory, resumes after an interruption, and returns a small JSON summary.

    RUN/data/            lagoon data build            (shards per leaf, tokenizer, held-out sets)
    RUN/automix/         lagoon automix run           (proxy sweep, surrogates, mixture.toml, report.html)
    RUN/pretrain/        lagoon train under torchrun  (distributed Muon, SDC checks, checkpoints, report.html)
    RUN/hf/              lagoon export hf             (config.json + model.safetensors + tokenizer)
    RUN/rl/              lagoon rl                    (warm-up, servers, trainer, actors, Iceberg table)
    RUN/evaluation.json  bits per byte per group, held-out arith-code reward, transformers parity
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lagoon.configio import dumps_toml, from_dict, to_dict
from lagoon.errors import ConfigError, LagoonError
from lagoon.train.metrics import read_jsonl


@dataclasses.dataclass
class Context:
    """What every stage sees: the pipeline config as plain data, the run directory and a way to talk."""

    config: dict[str, Any]
    run_dir: Path
    say: Callable[[str], None]
    results: dict[str, dict[str, Any]]
    """Summaries of the stages finished so far, by stage name."""

    def stage_config(self, **sections: dict[str, Any]):
        """The pipeline config with some keys replaced (``data={"shards": ...}``), validated."""
        from lagoon.config import LagoonConfig

        data = json.loads(json.dumps(self.config))
        for section, values in sections.items():
            data.setdefault(section, {}).update(values)
        return from_dict(LagoonConfig, data)

    @property
    def shards(self) -> Path:
        return self.run_dir / "data"

    @property
    def pretrain_dir(self) -> Path:
        return self.run_dir / "pretrain"

    @property
    def hf_dir(self) -> Path:
        return self.run_dir / "hf"

    @property
    def rl_dir(self) -> Path:
        return self.run_dir / "rl"

    def mixture(self) -> dict[str, Any]:
        """The `[data]` keys that pick the pretraining mixture: AutoMixer's choice when it ran."""
        automix = self.results.get("automix")
        if automix and self.config.get("demo", {}).get("use_automix_mixture", True):
            return {"mixture": automix["mixture_file"], "weights": {}}
        return {}


def data(ctx: Context) -> dict[str, Any]:
    from lagoon.data import ShardSet
    from lagoon.data.build import build

    config = ctx.stage_config()
    build(config, ctx.shards)
    shards = ShardSet.open(ctx.shards)
    return {"shards": str(ctx.shards), "leaves": len(shards.leaves), "tokens": int(sum(shards.leaf_tokens.values())),
            "groups": sorted(shards.groups)}


def automix(ctx: Context) -> dict[str, Any]:
    from lagoon.automix import run as run_automix

    config = ctx.stage_config(data={"shards": str(ctx.shards)})
    summary = run_automix(config, ctx.run_dir / "automix")
    return {"mixture_file": summary["mixture_file"], "report": summary["report"],
            **{key: summary[key] for key in ("predicted", "objective", "proxies") if key in summary}}


def pretrain(ctx: Context) -> dict[str, Any]:
    """Pretrain under torchrun with ``demo.pretrain_ranks`` processes (in-process when 1)."""
    from lagoon.train.checkpoint import newest_verified

    config = ctx.stage_config(data={"shards": str(ctx.shards), **ctx.mixture()})
    ranks = config.demo.pretrain_ranks
    run_dir = ctx.pretrain_dir
    if ranks == 1:
        from lagoon.train import run_training

        run_training(config, run_dir)
    else:
        config_path = ctx.run_dir / "pretrain.toml"
        config_path.write_text(dumps_toml(to_dict(config)))
        # `lagoon launch` is torchrun that exits with the ranks' own code (91-94 for an SDC verdict).
        command = [sys.executable, "-m", "lagoon", "launch", "--standalone", f"--nproc-per-node={ranks}",
                   "train", str(config_path), "--run-dir", str(run_dir)]
        ctx.say("$ lagoon " + " ".join(command[3:]))
        # Each rank gets an equal share of the cores (torchrun would otherwise leave one thread each).
        threads = max(1, (os.cpu_count() or 1) // ranks)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        code = _run_tree(command, env)
        if code != 0:
            raise LagoonError(f"pretraining under `lagoon launch` exited with code {code}; see {run_dir}/events.jsonl "
                              f"and rerun `lagoon demo` to resume from its last checkpoint")
    checkpoint = newest_verified(run_dir, ctx.say)
    if checkpoint is None:
        raise LagoonError(f"pretraining left no verified checkpoint in {run_dir}/checkpoints")
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    final = metrics[-1] if metrics else {}
    evals = [row for row in metrics if any(key.startswith("eval_bpb/") for key in row)]
    return {"checkpoint": str(checkpoint), "ranks": ranks, "steps": final.get("step"), "loss": final.get("loss"),
            "eval_step": evals[-1].get("step") if evals else None, "eval_tokens": config.train.eval_tokens,
            "eval_bpb": {key.split("/", 1)[1]: value for key, value in (evals[-1] if evals else {}).items()
                         if key.startswith("eval_bpb/")},
            **_sdc_summary(run_dir, final)}


def _run_tree(command: list[str], env: dict[str, str]) -> int:
    """Run a launcher to completion; if this process is interrupted (or killed: the child gets the parent-death
    signal), the launcher and every rank below it stop too, ranks in sessions of their own included."""
    from lagoon.processes import die_with_parent, stop_tree

    process = subprocess.Popen(command, env=env, preexec_fn=die_with_parent)
    try:
        return process.wait()
    except BaseException:
        stop_tree(process, grace_s=30)
        raise


def _sdc_summary(run_dir: Path, final: dict[str, Any]) -> dict[str, Any]:
    """How many checks ran, which faults were injected, and what the checks did about them."""
    events = read_jsonl(run_dir / "events.jsonl")
    return {"sdc_checks": int(final.get("sdc/checks") or 0), "sdc_rollbacks": int(final.get("sdc/rollbacks") or 0),
            "sdc_injected": sum(e["event"] == "sdc_fault_injected" for e in events),
            "sdc_events": [e["event"] for e in events if e["event"].startswith("sdc_") and
                           e["event"] != "sdc_fault_injected"]}


def export(ctx: Context) -> dict[str, Any]:
    from lagoon.model.hf import export_hf

    source = Path(ctx.results["pretrain"]["checkpoint"])
    export_hf(source, ctx.hf_dir)
    return {"hf": str(ctx.hf_dir), "source": str(source),
            "files": sorted(path.name for path in ctx.hf_dir.iterdir())}


def rl(ctx: Context) -> dict[str, Any]:
    from lagoon.rl import run as run_rl
    from lagoon.train.checkpoint import newest_verified

    init = ctx.hf_dir if ctx.hf_dir.is_dir() else Path(ctx.results["pretrain"]["checkpoint"])
    config = ctx.stage_config(rl={"init_checkpoint": str(init)})
    result = run_rl(config, ctx.rl_dir, say=ctx.say)
    final = newest_verified(ctx.rl_dir, ctx.say)
    before, after = result.get("eval_before", {}), result.get("eval_after", {})
    return {"init_checkpoint": str(init), "final_checkpoint": str(final) if final else None,
            "version": result.get("version"), "rl_s": result.get("rl_s"),
            "reward_before": before.get("reward_mean"), "reward_after": after.get("reward_mean"),
            "reward_before_policy": before.get("policy"),
            "episodes_per_eval": after.get("episodes")}


def evaluate(ctx: Context) -> dict[str, Any]:
    """Bits per byte per group before and after RL, the arith-code reward, and transformers parity."""
    import torch

    from lagoon.data import ShardSet
    from lagoon.model import from_pretrained
    from lagoon.train import evaluate_bpb

    config = ctx.stage_config()
    shards = ShardSet.open(ctx.shards)
    models = {"pretrained": ctx.hf_dir if ctx.hf_dir.is_dir() else Path(ctx.results["pretrain"]["checkpoint"])}
    final = ctx.results.get("rl", {}).get("final_checkpoint")
    if final:
        models["after RL"] = Path(final)
    bpb = {}
    for name, path in models.items():
        model = from_pretrained(path, dtype=torch.float32).eval()
        bpb[name] = evaluate_bpb(model, shards, max_tokens=config.demo.eval_tokens, seq_len=config.data.seq_len)
        ctx.say(f"bits per byte, {name}: " + ", ".join(f"{g} {v:.3f}" for g, v in sorted(bpb[name].items())))
    result: dict[str, Any] = {"bpb": bpb, "eval_tokens": config.demo.eval_tokens}
    rl_result = ctx.results.get("rl")
    if rl_result:
        result["arith_code_reward"] = {"before RL": rl_result.get("reward_before"),
                                       "after RL": rl_result.get("reward_after")}
    if config.demo.check_transformers and ctx.hf_dir.is_dir():
        result["transformers_max_abs_logit_diff"] = _transformers_parity(ctx.hf_dir, shards)
    (ctx.run_dir / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def require_transformers(config) -> None:
    """The evaluation's parity check needs transformers: refuse to start a pipeline that would reach it
    without (one line, exit 2) instead of finding out half an hour in, or skipping the check silently."""
    demo = config.demo
    if "evaluate" not in demo.stages or not demo.check_transformers:
        return
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ConfigError("demo.check_transformers", "the evaluation compares the export with transformers' "
                          "LagunaForCausalLM, but transformers is not installed: pip install 'lagoon[hf]' "
                          "(or set demo.check_transformers = false to skip the comparison)") from None


def _transformers_parity(hf_dir: Path, shards) -> float:
    """Max |logit difference| between lagoon and transformers' LagunaForCausalLM on held-out text."""
    import transformers
    import warnings

    import torch

    from lagoon.model import from_pretrained

    group = sorted(shards.eval_groups)[0]
    ids = torch.as_tensor(shards.eval_set(group).token_ids[:128].astype("int64"))[None]
    ours = from_pretrained(hf_dir, dtype=torch.float32).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.LagunaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return float((ours(ids).logits - theirs(ids).logits).abs().max())


def report(ctx: Context) -> dict[str, Any]:
    from lagoon.demo.report import write_report

    path = write_report(ctx.run_dir, ctx.results)
    return {"report": str(path)}


STAGE_FUNCTIONS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "data": data, "automix": automix, "pretrain": pretrain, "export": export, "rl": rl,
    "evaluate": evaluate, "report": report,
}
