"""`lagoon automix run` and `validate` end to end on the quick corpus with a handful of tiny proxies."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from lagoon.automix.sweep import TABLE_FILE, WEIGHT_PREFIX
from lagoon.data import Mixture, ShardSet
from lagoon.data.mixture import resolve_mixture
from tests.automix.conftest import automix_config, write_config
from tests.conftest import run_lagoon


@pytest.mark.timeout(900)
def test_run_validate_and_report_end_to_end(shard_dir, tmp_path):
    config = write_config(tmp_path / "automix.toml", automix_config(shard_dir, num_proxies=6))
    out = tmp_path / "out"
    result = run_lagoon("automix", "run", str(config), "--out", str(out), "--no-progress", timeout=600)
    assert result.returncode == 0, result.stderr
    assert "held-out Spearman" in result.stdout and "mixture:" in result.stdout

    shards = ShardSet.open(shard_dir)
    plan = json.loads((out / "plan.json").read_text())
    table = pq.read_table(out / TABLE_FILE).to_pydict()
    assert table["proxy"] == list(range(6))
    weights_NK = np.array([table[WEIGHT_PREFIX + leaf] for leaf in shards.leaves]).T
    assert np.allclose(weights_NK.sum(1), 1) and np.allclose(weights_NK[0], plan["prior"])  # proxy 0: natural
    assert all(0 < value < 20 for group in shards.groups for value in table[f"bpb/{group}"])

    # The mixture file is what `lagoon train` reads: [data] mixture = OUT/mixture.toml.
    mixture = Mixture.load(out / "mixture.toml")
    from lagoon.config import load_config

    train_config = load_config(config, [f'data.mixture="{out / "mixture.toml"}"'])
    assert resolve_mixture(train_config.data, shards) == mixture
    weights_K = np.array([mixture.weight(leaf) for leaf in shards.leaves])
    assert (weights_K <= np.array(plan["caps"]) + 1e-6).all()

    optimized = json.loads((out / "optimized.json").read_text())
    assert set(optimized["cv"]) == set(shards.groups)
    assert np.array(optimized["interactions"]["matrix"]).shape == (len(shards.groups), len(shards.leaves))
    assert optimized["predicted_objective"]["optimized"] <= optimized["predicted_objective"]["natural"] + 1e-9

    from lagoon import automix

    summary = automix.validate(train_config, out, show_progress=False)
    validation = json.loads((out / "validation.json").read_text())
    assert validation["optimized_beats_both_in_every_seed"] == summary["optimized_beats_both_in_every_seed"]
    assert set(validation["mixes"]) == {"optimized", "natural", "uniform"}
    for mix in validation["mixes"].values():
        assert len(mix["objective"]["values"]) == 2 and mix["objective"]["std"] >= 0
    for baseline in ("natural", "uniform"):  # paired per-group changes, losses included
        for group in shards.groups:
            change = validation["changes"][baseline][group]
            assert change["mean"] == pytest.approx(validation["mixes"]["optimized"]["groups"][group]["mean"]
                                                   - validation["mixes"][baseline]["groups"][group]["mean"])
    assert validation["compute"]["model_ratio"] == pytest.approx(2.0, rel=0.25)
    assert validation["compute"]["sweep_flops"] > 0 and validation["compute"]["validation_run_flops"] > 0
    runs = [run for mix in ("optimized", "natural", "uniform") for run in (out / "validation").glob(f"{mix}-*/seed*")]
    assert len(runs) == 6 and all(next((run / "checkpoints").glob("step_*")).is_dir() for run in runs)

    from lagoon.cli import main

    before = (out / "report.html").stat().st_mtime_ns
    assert main(["automix", "report", str(out)]) == 0 and (out / "report.html").stat().st_mtime_ns > before
    page = (out / "report.html").read_text()
    assert len(re.findall(r"data:image/png;base64,", page)) == 4  # scatter, heatmap, mixtures, validation bars
    assert "Validation at a larger scale" in page and "<script" not in page and "http" not in page
    assert "optimized − baseline" in page


def test_a_loss_is_reported_as_a_loss():
    from lagoon.automix.validation import verdict

    assert verdict({"values": [-0.01, -0.02, -0.001]}) == "better in every seed"
    assert verdict({"values": [0.01, 0.02, 0.001]}) == "worse in every seed"
    assert verdict({"values": [-0.01, 0.02, -0.001]}) == "better in 2 of 3 seeds"


def test_user_mistakes_are_one_line_errors(shard_dir, tmp_path, capsys):
    from lagoon.cli import main

    config = str(write_config(tmp_path / "automix.toml", automix_config(shard_dir)))
    cases = [
        (["run", config, "--out", str(tmp_path / "o"), "--set", "automix.proxy.train.steps=0"],
         "automix.proxy.train.steps: must be positive"),
        (["run", config, "--out", str(tmp_path / "o"), "--set", "automix.max_epochs=0.001"], "automix.max_epochs"),
        (["run", config, "--out", str(tmp_path / "o"), "--set", "automix.objective.poetry=1.0"],
         "automix.objective.poetry: no capability group"),
        (["validate", config, "--out", str(tmp_path / "none")], "automix run"),
    ]
    for arguments, fragment in cases:
        assert main(["automix", *arguments]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "none").exists()  # nothing half-written
