"""Replica checks on 4 gloo ranks with a real tiny Laguna and real optimizer steps (see tests/sdc/workers.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lagoon.sdc.errors import EXIT_HUNG, EXIT_PEER_LOST
from tests.sdc.conftest import ROOT, _env, free_port, wait_all

WORLD = 4


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("sdc_replicas")
    port = free_port()
    processes = [subprocess.Popen([sys.executable, "-m", "tests.sdc.workers", str(out)], cwd=ROOT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=_env(RANK=str(r), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                                           MASTER_PORT=str(port)))
                 for r in range(WORLD)]
    codes, stderr = wait_all(processes, timeout=400)
    assert codes == [0] * WORLD, stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.timeout(600)
def test_no_false_positive_over_healthy_training_steps(reports):
    for report in reports:
        assert report["healthy_checks"] == 30 and report["false_positives"] == 0


@pytest.mark.timeout(600)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_every_flip_is_detected_and_the_rank_and_parameter_named(reports, dtype):
    trials = reports[0][dtype]
    assert len(trials) >= 16
    for report in reports:  # every rank reaches the same verdict
        assert report[dtype] == trials
    for trial in trials:
        assert not trial["agreed"], trial
        assert trial["faulty"] == {str(trial["target"]): [trial["parameter"]]}, trial
        assert trial["restored"], trial
    assert {t["bit"] for t in trials} >= {"sign", "exponent", "mantissa"}


@pytest.mark.timeout(600)
def test_two_simultaneous_faults_are_both_named(reports):
    assert reports[0]["two_faults"] == {"1": ["model.layers.1.mlp.experts.down_proj"], "2": ["lm_head.weight"]}


@pytest.mark.timeout(600)
def test_a_tie_has_no_majority_and_every_replica_is_a_suspect(reports):
    tie = reports[0]["tie"]
    assert not tie["resolved"] and tie["suspects"] == [0, 1, 2, 3] and tie["groups"] == [[[0, 1], [2, 3]]]


@pytest.mark.timeout(600)
def test_hsdp_compares_shards_along_the_replicate_dimension_only(reports):
    hsdp = [r["hsdp"] for r in reports]
    assert [h["replica_ranks"] for h in hsdp] == [[0, 2], [1, 3], [0, 2], [1, 3]]
    assert all(h["clean_agreed"] for h in hsdp)
    assert hsdp[0]["local_digest"] != hsdp[1]["local_digest"]  # different shards differ, and that is fine
    assert hsdp[0]["flipped_agreed"] and hsdp[2]["flipped_agreed"]  # the other shard's replicas are untouched
    for rank in (1, 3):
        assert not hsdp[rank]["flipped_agreed"] and hsdp[rank]["suspects"] == [1, 3]
        assert hsdp[rank]["parameters"] == ["weight"]


@pytest.mark.timeout(600)
def test_a_rank_missing_a_check_turns_into_a_named_error_within_the_deadline(reports):
    """Rank 3 is late; ranks 0-2 end the gather with a named error within the deadline. Which of two detectors
    fires on a given rank is a race, and both answers are right: the rank whose own deadline passes first
    reports the hang (93); a rank still waiting when that one gives up sees its connection close and reports
    a lost peer (94) — the hang, seen second-hand. Either way rank 3 is named."""
    for report in reports[:3]:
        late = report["late"]
        assert late["exit_code"] in (EXIT_HUNG, EXIT_PEER_LOST), late
        reason = "did not complete within 3 s" if late["exit_code"] == EXIT_HUNG else "a peer went away"
        assert reason in late["error"] and 3 in late["ranks"], late
        assert late["seconds"] < 3 + 15, late  # the deadline, plus start-up slack on a loaded machine
    # Someone's own deadline always fires first: a lost peer is only ever the echo of a hang.
    assert EXIT_HUNG in [report["late"]["exit_code"] for report in reports[:3]]


@pytest.mark.timeout(600)
def test_pre_reduction_checks_name_the_rank_and_skip_flagged_steps(reports):
    precheck = reports[0]["precheck"]
    for report in reports:  # one decision on every rank
        assert report["precheck"] == precheck
    assert precheck["warm_events"] == []
    (kind, fields), = precheck["nan"]["events"]
    assert kind == "sdc_nonfinite" and fields["ranks"] == [2]
    # A skipped step leaves every weight alone; only the router's correction biases take their usual step.
    assert precheck["nan"]["skipped"] == 1.0
    assert precheck["nan"]["changed"] and all(n.endswith("e_score_correction_bias") for n in precheck["nan"]["changed"])
    (kind, fields), = precheck["grad_spike"]
    assert kind == "sdc_grad_spike" and fields["ranks"] == [1]
    spike = precheck["loss_spike"]
    assert "sdc_loss_spike" in [kind for kind, _ in spike["events"]]  # (every rank's gradients spike with it)
    assert spike["skipped"] == 1.0 and spike["replicas_agree"]
    assert all(name.endswith("e_score_correction_bias") for name in spike["changed"])


@pytest.mark.timeout(600)
def test_owner_verification_catches_a_corrupted_newton_schulz_result(reports):
    owners = [r["owner"] for r in reports]
    injected = [entry for owner in owners for entry in owner["injected"]]
    assert len(injected) == 1 and injected[0]["rank"] == 1 and injected[0]["step"] == 3
    for owner in owners:
        assert owner["verified"] >= 3  # every rank verified somebody's results on every step
        for entry in owner["steps"]:
            assert entry["replicas_agree"]  # the wrong update reached every replica identically
            if entry["step"] != 3:
                assert entry["events"] == [], entry
        (kind, fields), = owner["steps"][2]["events"]
        assert kind == "sdc_owner_mismatch" and fields["owner"] == 1 and fields["ranks"] == [1]
        assert [name.split("[")[0] for name in fields["parameters"]] == [injected[0]["parameter"]]
        assert "transient fault on the owner" in fields["detail"]
