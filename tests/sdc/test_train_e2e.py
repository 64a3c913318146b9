"""`lagoon train` with [sdc] on 2–3 gloo ranks: detection, escalation, rollback, fail-fast, hung and dead ranks.

The jobs are independent, so the module starts them all at once and each test checks its own job's
outcome (most of a job's wall time is process start-up and waiting, which overlaps).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from lagoon.sdc.errors import EXIT_CORRUPTION, EXIT_HUNG, EXIT_PEER_LOST
from tests.sdc.conftest import (events, final_weights, start_launch, start_ranks, start_torchrun, train_config, wait_all,
                                write_config)

PARAM = "model.layers.0.self_attn.q_proj.weight"
WATCHDOG_S = 8


@dataclass
class Job:
    codes: list[int]
    stderr: str
    run_dir: Path


def _jobs(shards: Path) -> dict[str, tuple[str, int, dict]]:
    """name → (launcher, ranks, config)."""
    flip = {"kind": "bitflip", "parameter": PARAM}
    return {
        # Two replicas: no majority → replay from checkpoint 2 → transient on rank 1 → train on.
        "escalate": ("torchrun", 2, train_config(shards, sdc={"faults": [
            {**flip, "step": 4, "rank": 1, "bit": "mantissa", "element": 5}]})),
        "clean2": ("torchrun", 2, train_config(shards)),
        # Two replicas, the flip one step before the check: by the check the gradient all-reduce has carried it
        # into rank 0's weights too, so only the replay of the pre-reduction statistics can name rank 1.
        "escalate_spread": ("ranks", 2, train_config(shards, sdc={"faults": [
            {**flip, "step": 3, "rank": 1, "bit": "exponent"}]})),
        # The fail policy's exit code through `lagoon launch`, and through plain torchrun's error file.
        "fail_launch": ("launch", 2, train_config(shards, sdc={"policy": "fail", "faults": [
            {**flip, "step": 2, "rank": 1, "bit": "sign"}]})),
        "fail_torchrun": ("torchrun", 2, train_config(shards, sdc={"policy": "fail", "faults": [
            {**flip, "step": 2, "rank": 1, "bit": "sign"}]})),
        # Three replicas: the vote names rank 0 → roll back to checkpoint 2 → train on.
        "majority": ("ranks", 3, train_config(shards, sdc={"faults": [{**flip, "step": 4, "rank": 0, "bit": "exponent"}]})),
        # Distributed Muon: rank 1's Newton–Schulz result is corrupted before it is shared; every replica applies
        # it (their fingerprints agree), owner verification names rank 1 and the run rolls back.
        "owner": ("ranks", 2, train_config(shards, optim={"distributed": "ddp"}, sdc={"owner_verify_every": 1, "faults": [
            {"kind": "ns_corrupt", "step": 4, "rank": 1, "bit": "exponent"}]})),
        "fail": ("ranks", 3, train_config(shards, sdc={"policy": "fail", "faults": [
            {**flip, "step": 2, "rank": 2, "bit": "sign"}]})),
        "persistent": ("ranks", 2, train_config(shards, sdc={"faults": [
            {**flip, "step": 3, "rank": 0, "bit": "exponent", "repeat": True}]})),
        "hang": ("ranks", 2, train_config(shards, sdc={"timeout_s": WATCHDOG_S, "faults": [
            {"kind": "hang", "step": 3, "rank": 1}]})),
        "die": ("ranks", 2, train_config(shards, sdc={"timeout_s": WATCHDOG_S, "faults": [
            {"kind": "die", "step": 3, "rank": 1}]})),
    }


@pytest.fixture(scope="module")
def jobs(sdc_shards, tmp_path_factory) -> dict[str, Job]:
    root = tmp_path_factory.mktemp("sdc_e2e")
    running = {}
    for name, (launcher, ranks, config) in _jobs(sdc_shards).items():
        path = write_config(root / f"{name}.toml", config)
        if launcher == "torchrun":   # the error file a scheduler names for the launcher
            processes = start_torchrun(path, root / name, ranks, TORCHELASTIC_ERROR_FILE=str(root / f"{name}.error.json"))
        else:
            processes = (start_launch if launcher == "launch" else start_ranks)(path, root / name, ranks)
        running[name] = (processes, root / name)
    results = {}
    for name, (processes, run_dir) in running.items():
        codes, stderr = wait_all(processes, timeout=400)
        results[name] = Job(codes, stderr, run_dir)
    return results


@pytest.mark.timeout(600)
def test_two_replicas_escalate_replay_and_match_an_uninjected_run(jobs):
    """A flip on one of two replicas has no majority: the run replays from the last verified checkpoint, the
    replay agrees (a transient fault; rank 1 named), and training ends with the same bits as a clean run."""
    job, clean = jobs["escalate"], jobs["clean2"]
    assert job.codes == [0] and clean.codes == [0], (job.stderr[-3000:], clean.stderr[-3000:])
    kinds = [(e["event"], e["step"]) for e in events(job.run_dir)]
    # Detected at the check right after it (step 4), replayed from checkpoint 2, found transient on rank 1.
    assert ("sdc_unresolved", 4) in kinds and ("rollback", 2) in kinds and ("sdc_transient", 4) in kinds, kinds
    transient = next(e for e in events(job.run_dir) if e["event"] == "sdc_transient")
    assert transient["ranks"] == [1] and transient["parameters"] == [PARAM] and transient["replicas_reproduced"] == 1
    assert not [e for e in events(clean.run_dir) if e["event"].startswith("sdc_")]  # no false positive
    assert final_weights(job.run_dir, 8) == final_weights(clean.run_dir, 8)


@pytest.mark.timeout(600)
def test_two_replicas_name_only_the_rank_whose_own_computation_diverged(jobs):
    """The flip (rank 1, step 3) reaches rank 0's weights through step 4's gradient all-reduce before the check:
    both replicas' weights differ from the replay. Step 4's pre-reduction statistics differ on rank 1 alone."""
    job, clean = jobs["escalate_spread"], jobs["clean2"]
    assert job.codes == [0, 0], job.stderr[-3000:]
    transient = next(e for e in events(job.run_dir) if e["event"] == "sdc_transient")
    assert transient["replicas_reproduced"] == 0          # the weights alone would have named both ranks
    assert transient["ranks"] == [1] and transient["localized"], transient
    assert "before the reduction first differed from the replay in step 4" in transient["detail"], transient
    assert final_weights(job.run_dir, 8) == final_weights(clean.run_dir, 8)


@pytest.mark.timeout(600)
def test_the_fail_policy_exit_code_reaches_the_caller_of_lagoon_launch(jobs):
    job = jobs["fail_launch"]
    assert job.codes == [EXIT_CORRUPTION], (job.codes, job.stderr[-3000:])   # plain torchrun: 1
    line = job.stderr.strip().splitlines()[-1]
    assert re.match(r"lagoon: error: rank \d exited with code 91: replicas disagree after step 2", line), line


@pytest.mark.timeout(600)
def test_plain_torchrun_writes_the_exit_code_where_a_scheduler_reads_it(jobs):
    """torchrun exits 1 for any rank failure; the first failure's code and line land in TORCHELASTIC_ERROR_FILE."""
    job = jobs["fail_torchrun"]
    assert job.codes == [1], (job.codes, job.stderr[-3000:])
    error = json.loads(job.run_dir.with_name("fail_torchrun.error.json").read_text())["message"]
    assert error["errorCode"] == EXIT_CORRUPTION, error
    assert error["message"].startswith("SDCError: replicas disagree after step 2"), error
    assert "Traceback" not in error["extraInfo"]["py_callstack"]


@pytest.mark.timeout(600)
def test_three_replicas_name_the_rank_roll_back_and_replay_the_healthy_bits(jobs):
    """The vote names rank 0; after the rollback the replayed step reproduces, bit for bit, the weights the two
    healthy replicas held when the corruption was found (the uninjected run's weights)."""
    job = jobs["majority"]
    assert job.codes == [0, 0, 0], job.stderr[-3000:]
    run = events(job.run_dir)
    corruption = next(e for e in run if e["event"] == "sdc_corruption")
    assert (corruption["step"], corruption["ranks"], corruption["parameters"]) == (4, [0], [PARAM])
    assert any(e["event"] == "rollback" and e["step"] == 2 for e in run)
    recovered = next(e for e in run if e["event"] == "sdc_recovered")
    assert recovered["step"] == 4 and recovered["matches_healthy"]
    assert recovered["digest"] == corruption["healthy_digest"]


@pytest.mark.timeout(600)
def test_fail_fast_names_rank_host_and_parameter_with_a_distinct_exit_code(jobs):
    job = jobs["fail"]
    assert job.codes == [EXIT_CORRUPTION] * 3, (job.codes, job.stderr[-3000:])
    line = next(line for line in job.stderr.splitlines() if line.startswith("lagoon: error: silent data corruption"))
    assert "rank 2 (host " in line and PARAM in line and "after step 2" in line, line
    assert "Traceback" not in job.stderr
    corruption = next(e for e in events(job.run_dir) if e["event"] == "sdc_corruption")
    assert corruption["ranks"] == [2] and corruption["parameters"] == [PARAM] and corruption["action"] == "fail"
    assert not (job.run_dir / "checkpoints" / "step_00000002").exists()  # the corrupted step was never committed


@pytest.mark.timeout(600)
def test_a_persistent_fault_survives_the_replay_and_ends_the_job(jobs):
    job = jobs["persistent"]
    assert job.codes == [EXIT_CORRUPTION] * 2, (job.codes, job.stderr[-3000:])
    assert "persistent silent data corruption" in job.stderr
    assert "rank 0 (host" in job.stderr and "rank 1 (host" in job.stderr
    kinds = [e["event"] for e in events(job.run_dir)]
    assert kinds.count("sdc_fault_injected") == 2 and "sdc_persistent" in kinds, kinds


@pytest.mark.timeout(600)
def test_a_hung_rank_ends_the_job_within_the_timeout_naming_it(jobs):
    job = jobs["hang"]
    # Rank 0 names the hung rank and exits; the hung rank itself then exits either on its own watchdog or on
    # finding rank 0's rendezvous store gone, whichever comes first on a loaded machine.
    assert job.codes[0] == EXIT_HUNG and job.codes[1] in (EXIT_HUNG, EXIT_PEER_LOST), (job.codes, job.stderr[-3000:])
    line = next(line for line in job.stderr.splitlines() if line.startswith("lagoon: error: rank 1 (host"))
    assert "hung" in line, line
    waited = float(re.search(r"for (\d+) s", line).group(1))
    assert WATCHDOG_S <= waited <= WATCHDOG_S + 2, line
    hung = [e for e in events(job.run_dir) if e["event"] == "sdc_hung"]
    assert hung and all(e["exit_code"] == EXIT_HUNG for e in hung)


@pytest.mark.timeout(600)
def test_a_dead_rank_ends_the_job_with_a_line_naming_it(jobs):
    job = jobs["die"]
    assert job.codes == [EXIT_PEER_LOST, -9], (job.codes, job.stderr[-3000:])
    line = next(line for line in job.stderr.splitlines() if line.startswith("lagoon: error: rank 1 (host"))
    assert "gone" in line or "dead" in line, line
    assert "Traceback" not in job.stderr


@pytest.mark.timeout(600)
def test_owner_verification_under_distributed_muon_names_the_owner_and_rolls_back(jobs):
    job = jobs["owner"]
    assert job.codes == [0, 0], job.stderr[-3000:]
    run = events(job.run_dir)
    injected = next(e for e in run if e["event"] == "sdc_fault_injected")
    mismatch = next(e for e in run if e["event"] == "sdc_owner_mismatch")
    assert (mismatch["step"], mismatch["owner"], mismatch["ranks"]) == (4, 1, [1])
    assert [name.split("[")[0] for name in mismatch["parameters"]] == [injected["parameters"][0]]
    assert any(e["event"] == "rollback" and e["step"] == 2 for e in run)
    assert not [e for e in run if e["event"] in ("sdc_corruption", "sdc_unresolved")]  # replicas always agreed
