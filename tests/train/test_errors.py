"""User mistakes stop `lagoon train` with one line (exit 2) before the run directory exists."""

from __future__ import annotations

import pytest

from lagoon.cli import main
from tests.train.conftest import train_config, write_config


def _fails_cleanly(capsys, tmp_path, config_path, *fragments, overrides=()) -> None:
    run_dir = tmp_path / "run"
    args = ["train", str(config_path), "--run-dir", str(run_dir)]
    for override in overrides:
        args += ["--set", override]
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not run_dir.exists(), "a failed start must leave no run directory"


def test_malformed_config(capsys, tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\nsteps = 3\n")
    _fails_cleanly(capsys, tmp_path, broken, "not valid TOML")


@pytest.mark.parametrize("override, fragments", [
    ("train.schedule=\"linear\"", ("train.schedule", "wsd")),
    ("train.steps=0", ("train.steps", "positive")),
    ("train.stepz=3", ("train.stepz", "unknown key")),
    ("train.grad_accum=3", ("train.grad_accum", "micro-batches")),
    ("data.global_batch_size=0", ("data.global_batch_size",)),
    ("train.init_from=\"/nonexistent/ckpt\"", ("train.init_from", "does not exist")),
    ("train.eval_groups=[\"poetry\"]", ("train.eval_groups", "poetry")),
    ("parallel.activation_checkpointing=\"sometimes\"", ("parallel.activation_checkpointing", "selective")),
    ("parallel.dp_shard=3", ("parallel.dp_shard", "does not divide the world size 1")),
    ("parallel.dp_replicate=2", ("parallel:", "dp_replicate (2) × dp_shard (1) = 2 ranks", "world has 1")),
    ("parallel.ep=2", ("parallel.ep", "not available")),
    ("optim.distributed=\"fsdp2\"", ("optim.distributed", "parallel.dp_shard")),
])
def test_bad_values(capsys, tmp_path, shard_dir, override, fragments):
    config_path = write_config(tmp_path / "run.toml", train_config(shard_dir))
    _fails_cleanly(capsys, tmp_path, config_path, *fragments, overrides=[override])


def test_missing_shard_directory(capsys, tmp_path, shard_dir):
    config_path = write_config(tmp_path / "run.toml", train_config(tmp_path / "no-such-shards"))
    _fails_cleanly(capsys, tmp_path, config_path, "data.shards", "does not exist", "lagoon data build")


def test_mixture_naming_an_unknown_leaf(capsys, tmp_path, shard_dir):
    inline = write_config(tmp_path / "inline.toml",
                          train_config(shard_dir, data={"weights": {"code/q1": 0.5, "poetry/q1": 0.5}}))
    _fails_cleanly(capsys, tmp_path, inline, "poetry/q1", "unknown leaf")
    mixture = tmp_path / "mix.toml"
    mixture.write_text('[weights]\n"code/q1" = 0.5\n"poetry/q9" = 0.5\n')
    from_file = write_config(tmp_path / "file.toml", train_config(shard_dir, data={"mixture": str(mixture)}))
    _fails_cleanly(capsys, tmp_path, from_file, "poetry/q9", "unknown leaf")


def test_token_budget_over_the_repetition_cap(capsys, tmp_path, shard_dir):
    config_path = write_config(tmp_path / "run.toml", train_config(shard_dir, train={"steps": 100000}))
    _fails_cleanly(capsys, tmp_path, config_path, "repetition cap")


def test_a_checkpoint_of_another_model_shape(capsys, tmp_path, shard_dir):
    """Resuming a run whose checkpoint holds another architecture names the checkpoint and changes nothing."""
    config_path = write_config(tmp_path / "run.toml", train_config(shard_dir, train={"steps": 2, "eval_every": 0}))
    run_dir = tmp_path / "run"
    assert main(["train", str(config_path), "--run-dir", str(run_dir), "--set", "train.steps=1"]) == 0
    capsys.readouterr()

    def snapshot():
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in run_dir.rglob("*")}

    before = snapshot()
    code = main(["train", str(config_path), "--run-dir", str(run_dir), "--set", "model.hidden_size=96"])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert "checkpoint" in lines[-1] and "step_00000001" in lines[-1] and "different model" in lines[-1], lines[-1]
    assert snapshot() == before, "a refused resume must leave the run directory as it was"
