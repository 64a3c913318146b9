"""run_training in process: finished runs are no-ops, hooks (quiet point, SDC digest, rollback), init_from,
and bits per byte (packed document-masked evaluation equals evaluating each document piece alone)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lagoon.config import LagoonConfig
from lagoon.configio import from_dict
from lagoon.data.shards import ShardSet
from lagoon.model import IGNORE_INDEX, from_pretrained
from lagoon.report import build_report
from lagoon.train import Hooks, evaluate_bpb, run_training
from lagoon.train.checkpoint import read_state
from tests.train.conftest import losses, train_config


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished_run(shard_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    threads = torch.get_num_threads()
    result = run_training(from_dict(LagoonConfig, train_config(shard_dir)), run_dir)
    torch.set_num_threads(threads)
    return result


def test_a_finished_run_is_a_no_op_and_its_checkpoint_loads(finished_run, shard_dir):
    run_dir = finished_run.run_dir
    before = (run_dir / "metrics.jsonl").read_text()
    again = run_training(from_dict(LagoonConfig, train_config(shard_dir)), run_dir)
    assert again.already_finished and again.step == 16 and not finished_run.already_finished
    assert again.eval_bpb == finished_run.eval_bpb and again.loss == finished_run.loss
    assert (run_dir / "metrics.jsonl").read_text() == before
    assert finished_run.checkpoint.name == "step_00000016"
    model = from_pretrained(finished_run.checkpoint)
    assert model.config.vocab_size == len(ShardSet.open(shard_dir).token_bytes)   # vocab follows the tokenizer
    bpb = evaluate_bpb(model, ShardSet.open(shard_dir), max_tokens=512, seq_len=64)
    assert bpb == pytest.approx(finished_run.eval_bpb, rel=1e-6)
    page = build_report(run_dir).read_text()
    assert page.count("data:image/png;base64,") >= 5
    for title in ("Training loss", "Learning rate", "bits per byte per capability group", "Expert load"):
        assert title in page


class _Recorder(Hooks):
    """Logs a value every step, stores a digest with each checkpoint, and asks once for a rollback at step 7."""

    def __init__(self):
        self.loaded: list[tuple[int, str | None]] = []
        self.rolled_back = False

    def after_optimizer_step(self, ctx):
        ctx.log({"hook/step_seen": ctx.step})
        if ctx.step == 7 and not self.rolled_back:
            self.rolled_back = True
            ctx.request_rollback("test: pretend the replicas disagree")

    def before_checkpoint_save(self, ctx):
        ctx.sdc_digest = f"digest-{ctx.step}"

    def after_checkpoint_load(self, ctx):
        self.loaded.append((ctx.step, ctx.sdc_digest))


def test_hooks_roll_back_to_the_last_verified_checkpoint_and_replay_exactly(finished_run, shard_dir, tmp_path):
    hook = _Recorder()
    result = run_training(from_dict(LagoonConfig, train_config(shard_dir)), tmp_path / "run", hooks=[hook])
    assert result.step == 16
    assert hook.loaded == [(4, "digest-4")]
    assert losses(tmp_path / "run") == losses(finished_run.run_dir)   # the replay is deterministic
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["hook/step_seen"] for row in rows] == list(range(1, 17))
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    rollback = next(event for event in events if event["event"] == "rollback")
    assert (rollback["from_step"], rollback["step"]) == (7, 4) and "replicas disagree" in rollback["reason"]
    assert read_state(result.checkpoint).sdc_digest == "digest-16"


def test_init_from_a_checkpoint_continues_from_its_weights(finished_run, shard_dir, tmp_path):
    fresh_first_loss = losses(finished_run.run_dir)[0][1]
    config = train_config(shard_dir, train={"steps": 2, "init_from": str(finished_run.checkpoint),
                                            "checkpoint_every": 0})
    result = run_training(from_dict(LagoonConfig, config), tmp_path / "run")
    first_loss = losses(tmp_path / "run")[0][1]
    assert first_loss < fresh_first_loss - 1.0, (first_loss, fresh_first_loss)
    assert result.checkpoint is not None and result.step == 2


def test_packed_document_masked_bpb_equals_each_piece_alone(finished_run, shard_dir):
    shards = ShardSet.open(shard_dir)
    model = from_pretrained(finished_run.checkpoint, dtype=torch.float32).eval()
    fast = evaluate_bpb(model, shards, groups=["math"], max_tokens=1024, seq_len=64, batch_size=4)["math"]
    assert evaluate_bpb(model, shards, groups=["math"], max_tokens=1024, seq_len=64, batch_size=3)["math"] == \
        pytest.approx(fast, rel=1e-6)

    # Reference: every row's document pieces evaluated one at a time, unpacked, positions from 0.
    nats, total_bytes = 0.0, 0
    token_bytes = torch.from_numpy(shards.token_bytes.astype("int64"))
    with torch.no_grad():
        for batch in shards.eval_set("math").batches(64, 4, 1024):
            for inputs, targets, documents in zip(batch.input_ids, batch.targets, batch.document_ids):
                for document in documents.unique():
                    keep = (documents == document) & (targets != IGNORE_INDEX)
                    if not keep.any():
                        continue
                    logits = model(inputs[keep][None]).logits[0]
                    nats += F.cross_entropy(logits.double(), targets[keep], reduction="sum").item()
                    total_bytes += int(token_bytes[targets[keep]].sum())
    assert fast == pytest.approx(nats / (math.log(2) * total_bytes), rel=1e-5)
    whole = shards.eval_set("math")
    covered = evaluate_bpb(model, shards, groups=["math"], max_tokens=whole.num_tokens, seq_len=64)
    assert math.isfinite(covered["math"]) and whole.num_bytes > 0


def test_gradient_accumulation_and_bf16_autocast(shard_dir, tmp_path):
    short = {"steps": 4, "eval_every": 0, "checkpoint_every": 0, "checkpoint_at_end": False}
    whole = run_training(from_dict(LagoonConfig, train_config(shard_dir, train=short)), tmp_path / "whole")
    split = run_training(from_dict(LagoonConfig, train_config(shard_dir, train={**short, "grad_accum": 4})),
                         tmp_path / "split")
    for (step, a), (_, b) in zip(losses(tmp_path / "whole"), losses(tmp_path / "split"), strict=True):
        assert abs(a - b) < 1e-5, (step, a, b)   # 4 micro-batches of 2 rows = one batch of 8
    assert whole.checkpoint is None and split.step == 4
    bf16 = run_training(from_dict(LagoonConfig, train_config(shard_dir, train={**short, "dtype": "bfloat16"})),
                        tmp_path / "bf16")
    assert math.isfinite(bf16.loss) and abs(bf16.loss - whole.loss) < 0.1
