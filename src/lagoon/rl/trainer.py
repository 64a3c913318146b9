"""The RL trainer process: consume trajectories from the table, take CISPO steps, publish new weights.

    lagoon rl trainer CONFIG --run-dir DIR [--server URL ...]        # one process
    torchrun --nproc-per-node 2 -m lagoon rl trainer CONFIG --run-dir DIR ...   # data-parallel

Each step: read the new append snapshots (`ConsumerState.poll`), drop groups staler than η, take the
oldest B groups, compute group-normalized advantages, pack the sequences, and run CISPO with the LM head
in fp32 (`lagoon.rl.loss`), accumulating gradients over micro-batches; then one optimizer step, publish
the weights as the next policy version (`lagoon.weights`), publish progress to the table's properties
(for the actors' admission control), and every few steps a checkpoint.

The model and optimizer are the training engine's (`lagoon.parallel.engine`), as in pretraining: the
``[parallel]`` layout (DDP, FSDP2 or HSDP), ``[optim]`` with ``[rl.optim]``'s keys replaced (distributed Muon
whenever there are several ranks and ``optim.distributed`` asks for it, and always under sharding), and
sharded checkpoints that resume in any layout.

Run directory (shared with the orchestrator):

    metrics.jsonl             one line per step (keys below)
    events.jsonl              resumes, publications that failed on some server, expiries
    checkpoints/step_N/       the checkpoint contract (lagoon.train.checkpoint); its loader state is the
                              table read position (`ConsumerState`), so a restart neither skips nor repeats
    trainer/consumed.jsonl    per step: the groups trained on and dropped (an audit trail of what went
                              into which version; lines past a resumed checkpoint are dropped)

Metrics keys: step (= the new policy version), reward_mean, reward_std, groups, trajectories,
loss_tokens, loss, grad_norm, lr, clip_high_frac, clip_low_frac, mismatch_kl (k3 estimate of
KL(μ‖π) over all trained tokens), mismatch_kl_fresh (over tokens sampled by the trainer's current
version only: the pure train–inference numerical mismatch), ratio_max, staleness_mean, staleness_max,
staleness_hist ({versions behind: trajectories}), dropped_stale, wait_s, train_s, weight_sync_s,
weight_sync_gbps, weight_bytes, tokens_per_s, elapsed_s, queued_groups, and the actors' counters
(`lagoon.rl.health`): infra/server, infra/sandbox, infra/harness, infra/append, infra/retries, episodes,
episodes_model_failed. While it waits for data the trainer stops (exit 3, one line) once every actor
reports only infrastructure failures past ``rl.actor.max_consecutive_infra_failures``.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import torch

from lagoon.errors import LagoonError
from lagoon.rl.batching import MicroBatch, pack, samples_from_groups
from lagoon.rl.consumer import Batch, ConsumerState
from lagoon.rl.health import TrainerWatch
from lagoon.rl.loss import CispoStats, cispo_loss, sequence_logprobs
from lagoon.rl.replay import replay
from lagoon.rl.staleness import StalenessFilter, histogram
from lagoon.rl.store import TrajectoryStore
from lagoon.weights import WeightPublisher

CONSUMED_LOG = Path("trainer") / "consumed.jsonl"


class StopRequested(Exception):
    """SIGTERM/SIGINT arrived; the trainer stops at the next quiet point."""


class Trainer:
    """One trainer process (rank `dist_info.rank` of a data-parallel group, or alone)."""

    def __init__(self, config, run_dir: str | Path, servers: list[str] | None = None, say=print):
        from lagoon.model.hf import read_config
        from lagoon.parallel.engine import Engine
        from lagoon.train import checkpoint as ckpt
        from lagoon.train.distributed import setup
        from lagoon.train.metrics import MetricsWriter
        from lagoon.train.rng import restore_rng

        self.config = config
        self.rl = config.rl
        self.run_dir = Path(run_dir)
        self.say = say
        self.dist = setup(self.rl.trainer.device)
        self.device = self.dist.device
        self.is_main = self.dist.is_main
        self.bound = StalenessFilter(self.rl.trainer.max_staleness)
        self.metrics = MetricsWriter(self.run_dir, active=self.is_main)
        self._stop = False

        ckpt.remove_staging(ckpt.checkpoints_root(self.run_dir), say) if self.is_main else None
        resume = ckpt.newest_verified(self.run_dir, say)
        source = resume or self._init_checkpoint()
        torch.manual_seed(self.rl.trainer.seed)
        self.engine = Engine.build(read_config(source), config.parallel, self.rl.optim_config(config.optim), self.dist,
                                   source=source if resume is None else None, initialize=resume is None)
        self.model, self.optimizer = self.engine.model, self.engine.optimizer
        self.tokenizer_dir = Path(self.rl.init_checkpoint) if self.rl.init_checkpoint else source
        self.consumer = ConsumerState()
        self.version = 0
        self.tokens_seen = 0
        if resume is not None:
            state = ckpt.read_state(resume)
            self.version = state.step
            self.tokens_seen = state.tokens_seen
            self.engine.load(resume)
            self.consumer = ConsumerState.from_state_dict(ckpt.read_loader_state(resume))
            restore_rng(ckpt.read_rng_state(resume, self.dist.rank))
            self.metrics.resume_at(self.version)
            if self.is_main:
                _truncate_jsonl(self.run_dir / CONSUMED_LOG, self.version)
                self.metrics.event("resume", step=self.version, checkpoint=resume.name,
                                   pending_groups=len(self.consumer.pending))
            say(f"trainer: resumed from {resume.name} at version {self.version}, "
                f"{len(self.consumer.pending)} groups pending")
        self.last_checkpoint = self.version
        self._last_expiry = self.version
        self.store = TrajectoryStore(self.rl.table, self.run_dir) if self.is_main else None
        self.publisher = WeightPublisher.for_run(self.rl, self.run_dir, servers or []) if self.is_main else None
        self.watch = TrainerWatch(self.run_dir, self.rl) if self.is_main else None  # actors' infrastructure health
        if self.is_main:
            (self.run_dir / CONSUMED_LOG).parent.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()

    def _init_checkpoint(self) -> Path:
        if not self.rl.init_checkpoint:
            raise LagoonError("rl.init_checkpoint is empty and the run has no trainer checkpoint to resume from")
        path = Path(self.rl.init_checkpoint)
        if not path.is_dir():
            raise LagoonError(f"rl.init_checkpoint {path} is not a directory")
        return path

    # ----------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Train until `rl.total_steps`; returns the final version. Stops cleanly on SIGTERM/SIGINT."""
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self._sync_servers()
            while self.version < self.rl.total_steps:
                try:
                    batch, waited = self._next_batch()
                except StopRequested:
                    break
                record = self.step(batch)
                record["wait_s"] = waited
                self._after_step(batch, record)
                if self._stop:
                    break
            if self.version > self.last_checkpoint:
                self.save_checkpoint()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.publisher is not None:
                self.publisher.remove_segments()
            self.metrics.close()
        return self.version

    def _request_stop(self, signum, frame) -> None:
        self._stop = True

    def _publishable(self):
        """The model as the publisher takes it: this rank's model, or under sharding a copy gathered tensor by
        tensor onto rank 0 (`lagoon.parallel.gather`; a collective, None on the other ranks)."""
        if not self.engine.sharded:
            return self.model
        from lagoon.parallel.gather import gathered_model

        return gathered_model(self.model, self.engine.mesh)

    def _sync_servers(self) -> None:
        """Make sure every server serves this trainer's current version (after a resume it may not)."""
        from lagoon.train.distributed import broadcast_object
        from lagoon.weights import weights_digest

        if not broadcast_object(bool(self.publisher.servers) if self.is_main else None, self.dist):
            return
        model = self._publishable()
        if not self.is_main:
            return
        digest = weights_digest(model)
        replies = self.publisher.server_weights()
        if all(r is not None and r.get("policy_version") == self.version and r.get("digest") == digest for r in replies):
            self._publish_progress()
            return
        record = self.publisher.publish(model, self.version, self.tokenizer_dir)
        self.metrics.event("publish", step=self.version, reason="servers behind the trainer",
                           sync_s=record["sync_s"], failed=record["failed_servers"])
        self._publish_progress()

    # ----------------------------------------------------------------------------------------------
    def _next_batch(self) -> tuple[Batch, float]:
        """Block until B admissible groups are queued (rank 0 reads; other ranks receive the batch)."""
        from lagoon.train.distributed import broadcast_object

        started = time.perf_counter()
        batch = None
        if self.is_main:
            B = self.rl.trainer.groups_per_step
            while True:
                batch = self.consumer.take(self.version, B, self.bound)
                if batch is not None:
                    break
                if self._stop:
                    batch = "stop"
                    break
                if self.consumer.poll(self.store) == 0:
                    self.watch.check()   # stop with one line when every actor is stuck on infrastructure
                    time.sleep(self.rl.trainer.poll_interval_s)
        batch = broadcast_object(batch, self.dist)
        if batch == "stop":
            raise StopRequested
        return batch, time.perf_counter() - started

    def step(self, batch: Batch) -> dict[str, Any]:
        """One CISPO update on `batch`; returns the step's measurements."""
        from lagoon.train.distributed import all_max, all_sum

        t = self.rl.trainer
        started = time.perf_counter()
        samples = samples_from_groups([g.trajectories for g in batch.groups], t.advantage_std_normalize)
        loss_tokens = sum(sum(s.sequence.loss_mask) for s in samples)
        # Each data-parallel rank packs its own share of the sequences (longest first, dealt round-robin).
        ordered = sorted(samples, key=lambda s: -s.tokens)
        mine = pack(ordered[self.dist.rank::self.dist.world_size], t.micro_batch_tokens, t.row_tokens)
        # Every rank runs as many micro-batches as the busiest (masked one-token passes fill in): FSDP2 gathers
        # parameters in each forward, so the ranks' forward counts must match; it also keeps DDP in step.
        counts = int(all_max(len(mine), self.dist, self.device))
        mine += [_empty_micro_batch() for _ in range(max(counts, 1) - len(mine))]
        if t.warmup_steps:
            self.optimizer.set_lr_scale(min(1.0, (self.version + 1) / t.warmup_steps))
        self.optimizer.zero_grad()
        total = CispoStats(0, 0, 0, 0, 0, 0)
        fresh = [0.0, 0.0]
        loss_sum, tokens = 0.0, 0
        for index, mb in enumerate(mine):
            with self.engine.micro_batch(index == len(mine) - 1):
                loss, stats, fresh_kl, fresh_tokens = self._micro_step(mb, max(loss_tokens, 1))
            total = total.add(stats)
            fresh[0] += fresh_kl
            fresh[1] += fresh_tokens
            loss_sum += loss
            tokens += mb.input_ids.numel()
        if self.dist.world_size > 1:
            sums = all_sum([loss_sum, total.tokens, total.clipped_high, total.clipped_low, total.mismatch_kl,
                            fresh[0], fresh[1], tokens], self.dist, self.device)
            loss_sum, total.tokens, total.clipped_high, total.clipped_low, total.mismatch_kl, fresh[0], fresh[1], tokens = sums
        opt = self.optimizer.step(max_grad_norm=t.max_grad_norm or None)
        load = self.model.update_router_biases(self.dist.group)
        elapsed = time.perf_counter() - started
        self.tokens_seen += int(tokens)
        rewards = [tr.reward for g in batch.groups for tr in g.trajectories]
        mean = sum(rewards) / len(rewards)
        n = max(total.tokens, 1)
        return {
            "reward_mean": mean, "reward_std": (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5,
            "groups": len(batch.groups), "trajectories": len(rewards), "loss_tokens": int(total.tokens),
            "loss": loss_sum, "grad_norm": opt.get("grad_norm"), "lr": opt.get("lr"),
            "clip_high_frac": total.clipped_high / n, "clip_low_frac": total.clipped_low / n,
            "mismatch_kl": total.mismatch_kl / n,
            "mismatch_kl_fresh": fresh[0] / fresh[1] if fresh[1] else None,
            "ratio_max": total.ratio_max, "train_s": elapsed, "tokens_per_s": tokens / max(elapsed, 1e-9),
            **load,
        }

    def _micro_step(self, mb: MicroBatch, num_tokens: int) -> tuple[float, CispoStats, float, float]:
        t = self.rl.trainer
        device = self.device
        with replay(self.model, mb.routed_experts, t.routing_replay):   # rl.trainer.routing_replay (lagoon.rl.replay)
            logprobs_BT = sequence_logprobs(self.model, mb.input_ids.to(device), mb.document_ids.to(device),
                                            call=self.engine.wrapped)
        mask_BT = mb.loss_mask.to(device)
        sampler_BT = mb.sampler_logprobs.to(device)
        loss, stats = cispo_loss(logprobs_BT, sampler_BT, mb.advantages.to(device), mask_BT,
                                 num_tokens, t.epsilon_high, t.epsilon_low)
        aux = self.model.router_losses()
        if aux:
            loss = loss + sum(aux.values()) * (mb.loss_tokens / num_tokens)
        # DDP, FSDP2 and distributed Muon average gradients over ranks; the loss is a sum over the global batch.
        (loss * self.dist.world_size).backward()
        with torch.no_grad():
            fresh_BT = mask_BT & (mb.policy_versions.to(device) == self.version)
            log_ratio = (logprobs_BT.detach() - sampler_BT)[fresh_BT]
            fresh_kl = float((torch.exp(log_ratio) - 1 - log_ratio).sum())
        return float(loss.detach()), stats, fresh_kl, float(fresh_BT.sum())

    # ----------------------------------------------------------------------------------------------
    def _after_step(self, batch: Batch, record: dict[str, Any]) -> None:
        self.version += 1
        t = self.rl.trainer
        publish = self.version % t.publish_every == 0 or self.version == self.rl.total_steps
        model = self._publishable() if publish else None
        if not self.is_main:
            if self.version % t.checkpoint_every == 0:
                self.save_checkpoint()
            return
        if publish:
            sync = self.publisher.publish(model, self.version, self.tokenizer_dir)
            record.update(weight_sync_s=sync["sync_s"], weight_sync_gbps=sync["gb_per_s"], weight_bytes=sync["bytes"])
            if sync["failed_servers"]:
                self.metrics.event("publish_failed", step=self.version, servers=sync["failed_servers"])
        self._publish_progress()
        record.update(
            step=self.version, staleness_hist=histogram(batch.staleness),
            staleness_mean=sum(batch.staleness) / len(batch.staleness), staleness_max=max(batch.staleness),
            dropped_stale=sum(len(g.trajectories) for g in batch.dropped), queued_groups=len(self.consumer.pending),
            elapsed_s=time.perf_counter() - self.started, **self.watch.metrics(),
        )
        if self.version % t.checkpoint_every == 0:
            self.save_checkpoint()
        self.metrics.write(record)
        with (self.run_dir / CONSUMED_LOG).open("a") as handle:
            handle.write(json.dumps({"step": self.version, "groups": [g.group_id for g in batch.groups],
                                     "dropped": [g.group_id for g in batch.dropped]}) + "\n")
        self.say(f"trainer: version {self.version}  reward {record['reward_mean']:.3f}  loss {record['loss']:+.4f}  "
                 f"staleness {record['staleness_mean']:.2f}  kl {record['mismatch_kl']:.2e}  "
                 f"sync {record.get('weight_sync_s', 0):.2f}s")

    def _publish_progress(self) -> None:
        self.store.publish_progress({
            "version": self.version, "consumed_groups": self.consumer.consumed_groups,
            "read_snapshot": self.consumer.last_snapshot, "checkpoint_version": self.last_checkpoint,
            "total_steps": self.rl.total_steps, "time": time.time(),
        })

    def save_checkpoint(self) -> None:
        """A sharded checkpoint of the engine, the table read position and the RNGs (every rank calls it)."""
        from lagoon.configio import to_dict
        from lagoon.train import checkpoint as ckpt
        from lagoon.train.rng import capture_rng

        state = ckpt.CheckpointState(step=self.version, tokens_seen=self.tokens_seen,
                                     world_size=self.dist.world_size, config=to_dict(self.config))
        self.engine.save(self.run_dir, state, self.consumer.state_dict(), capture_rng(), self.tokenizer_dir,
                         self.rl.trainer.keep_last)
        if self.is_main:
            # Snapshots before the checkpoint's read position will never be read again by this run.
            every = self.rl.table.expire_every_steps
            if every and self.version - self._last_expiry >= every:
                self._last_expiry = self.version
                expired = self.store.expire(self.consumer.last_snapshot, self.rl.table.retain_snapshots)
                if expired:
                    self.metrics.event("expire_snapshots", step=self.version, expired=expired)
        self.last_checkpoint = self.version
        self.dist.barrier()

    def close(self) -> None:
        self.dist.close()


def _empty_micro_batch() -> MicroBatch:
    from lagoon.tokens import PAD_ID

    def row(value, dtype):
        return torch.tensor([[value]], dtype=dtype)

    return MicroBatch(row(PAD_ID, torch.long), row(0, torch.long), row(False, torch.bool), row(0.0, torch.float32),
                      row(0.0, torch.float32), row(-1, torch.long))


def _truncate_jsonl(path: Path, step: int) -> None:
    from lagoon.train.metrics import truncate_after

    truncate_after(path, step)
