"""`SDCHooks`: silent-data-corruption checks inside `lagoon train`, at the loop's quiet points.

    from lagoon.sdc import SDCHooks
    run_training(config, run_dir, hooks=[SDCHooks(config.sdc)])   # what `lagoon train` does when [sdc] is on

After every optimizer step (all ranks together):

1. configured faults fire (`lagoon.sdc.inject`);
2. pending events from the pre-reduction checks and the owner verification are recorded;
3. on check steps — every ``sdc.interval`` steps, every checkpoint step, and a step being replayed for
   escalation — every replica fingerprints its weights, the table is all-gathered and voted on
   (`lagoon.sdc.checker`), then the policy reacts:

   ============  ==============================  ==============================================
   verdict       policy ``log``                  ``fail`` / ``rollback``
   ============  ==============================  ==============================================
   agree         the step is verified            the step is verified
   majority      event, train on                 fail: exit 91 naming rank, host, parameters;
                                                 rollback: restore the last verified checkpoint
   no majority   event, train on                 replay from the last verified checkpoint to this
                                                 step and compare again (escalation): gone →
                                                 transient, the rank it began on is named (below;
                                                 fail: exit 91; rollback: train on); still
                                                 there → persistent: exit 91 naming the suspects
   ============  ==============================  ==============================================

   Which rank a transient fault began on: once a faulty replica's weights have been through one more
   step, the gradient all-reduce has changed every replica's weights, so comparing weights with the
   replay names them all. The replay therefore also compares each replica's pre-reduction statistics
   (its own loss and local gradient norm, `lagoon.sdc.precheck`) step by step: the first step where
   they differ names the replica whose own computation went wrong. Without those statistics (the
   pre-reduction checks are off) a replica whose weights matched the replay bit for bit is cleared;
   if none did, the event says plainly that the replicas cannot tell (``localized = false``) and names
   every replica as a suspect.

4. counters go into the step's metrics line (``sdc/checks``, ``sdc/events``, ``sdc/rollbacks``, ...).

Before a checkpoint is written its step must be verified; the checkpoint stores the verified digest
(`encode_digest`). After a checkpoint is loaded (resume or rollback) the weights are fingerprinted,
compared with that digest (a bit-identical restore) and across replicas. Rollbacks are capped by
``sdc.max_rollbacks`` (and ``train.max_rollbacks``); past the cap the job ends with exit code 92.
A background watchdog ends a job whose rank hangs or dies (exit 93 / 94, `lagoon.sdc.watchdog`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

from lagoon.errors import LagoonError
from lagoon.sdc.checker import CheckResult, ReplicaChecker, differing_parameters, encode_digest, table_hash
from lagoon.sdc.config import SDCConfig
from lagoon.sdc.errors import SDCError, SDCRetriesExhausted
from lagoon.sdc.events import EventLog
from lagoon.sdc.fingerprint import Fingerprinter
from lagoon.sdc.inject import FaultInjector
from lagoon.sdc.precheck import PreReductionMonitor, first_divergence
from lagoon.sdc.replicas import ReplicaGroup
from lagoon.sdc.vote import compare_runs, consensus
from lagoon.sdc.watchdog import Watchdog
from lagoon.train.hooks import HookContext, Hooks


@dataclass
class Escalation:
    """A disagreement without a majority, waiting for its replay."""

    step: int
    gathered: torch.Tensor
    parameters: list[str]
    suspects: list[int]
    pre_reduction: dict[int, torch.Tensor]
    """The first run's pre-reduction statistics since the checkpoint the replay starts from."""


_UNLOCALIZED = ("every replica's weights differ from the replay (the gradient reduction spread the fault before "
                "the check) and no pre-reduction statistics show where it began, so the replicas cannot tell "
                "which one was faulty")


def _listed(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class SDCHooks(Hooks):
    def __init__(self, config: SDCConfig, replicas: ReplicaGroup | None = None):
        self.config = config
        self._replicas_override = replicas
        self.ready = False
        self.checks = 0
        self.rollbacks = 0
        self.pending: Escalation | None = None
        self.verified: tuple[int, list[str], torch.Tensor] | None = None
        self.last_checkpoint: int | None = None
        self.last_result: CheckResult | None = None
        self._injections_logged = 0
        self.expected: tuple[int, str] | None = None
        """(step, digest-table hash) the healthy replicas had when a rollback was requested; the replay must
        reproduce it."""

    # ----------------------------------------------------------------------------------------------
    def _setup(self, ctx: HookContext) -> None:
        if self.ready:
            return
        config = self.config
        self.rank = ctx.rank
        self.train = ctx.config.train
        self.replicas, self.ranks, self.shards = self._groups(ctx)
        self.events = EventLog(ctx.run_dir, active=ctx.rank == 0)
        self.checker = ReplicaChecker(self.replicas, Fingerprinter(config.lanes, config.kernel))
        self.injector = FaultInjector(config.faults, ctx.rank)
        self.max_rollbacks = min(config.max_rollbacks, self.train.max_rollbacks)
        # With `enabled = false` only the configured faults fire (a drill of what goes unnoticed).
        self.watchdog = Watchdog(self.ranks, config.timeout_s, on_fire=self._watchdog_fired)
        if config.enabled and config.watchdog:
            self.watchdog.start()
        self.precheck = PreReductionMonitor(config, self.ranks)
        # With one rank there is nobody to name and the optimizer already skips non-finite steps.
        if config.enabled and self.precheck.enabled and (self.ranks.size > 1 or config.loss_spike_factor > 0):
            self.precheck.attach(ctx.model, ctx.wrapped_model, ctx.optimizer, ctx.step)
        self.owner = None
        if (config.enabled and config.owner_verify_every > 0) or any(f.kind == "ns_corrupt" for f in config.faults):
            from lagoon.sdc.owner import OwnerVerifier

            # Distributed Muon's owners live in its data-parallel group: every rank (DDP), the shard group (FSDP2).
            owners = self.shards if self.shards is not None else self.replicas
            self.owner = OwnerVerifier.attach(ctx.optimizer, config, owners, self.injector, ctx.step)
        self.ready = True

    def _groups(self, ctx: HookContext) -> tuple[ReplicaGroup, ReplicaGroup, ReplicaGroup | None]:
        """(replicas, every rank, shard peers) for this layout.

        Replicas hold the same weights and are compared by fingerprint: every rank under DDP, the ranks along
        ``dp_replicate`` under HSDP, none but this rank under plain FSDP (there the owner verification and the
        NaN/spike checks are what runs). The pre-reduction checks and the watchdog span every rank; the shard
        peers (None unless sharded) are distributed Muon's owners and the ranks whose verified digests
        together describe a checkpoint."""
        from lagoon.parallel.mesh import REPLICATE, SHARD

        if self._replicas_override is not None:
            return self._replicas_override, self._replicas_override, None
        mesh = next((p.device_mesh for p in ctx.model.parameters() if hasattr(p, "device_mesh")), None)
        if mesh is None:
            replicas = ReplicaGroup.from_group(ctx.group, self.config.timeout_s)
            return replicas, replicas, None
        names = list(mesh.mesh_dim_names or ())
        assert SHARD in names, f"a sharded model's mesh names its shard dimension: {names}"
        replicas = (ReplicaGroup.from_mesh(mesh, REPLICATE, self.config.timeout_s) if REPLICATE in names
                    else ReplicaGroup.single())
        return replicas, ReplicaGroup.from_group(ctx.group, self.config.timeout_s), \
            ReplicaGroup.from_mesh(mesh, SHARD, self.config.timeout_s)

    def _say(self, message: str) -> None:
        if self.rank == 0:
            print(f"lagoon: sdc: {message}", file=sys.stderr, flush=True)

    def _watchdog_fired(self, kind: str, message: str, exit_code: int) -> None:
        # Whichever rank notices writes the line: the job is ending and rank 0 may be the one that hung.
        self.events.record(f"sdc_{kind}", self.watchdog.step, write=True, detail=message, exit_code=exit_code,
                           reporter=self.replicas.rank)

    def _is_check_step(self, step: int) -> bool:
        train = self.train
        checkpoint = (train.checkpoint_every and step % train.checkpoint_every == 0) or (
            step == train.steps and train.checkpoint_at_end)
        pending = self.pending is not None and self.pending.step == step
        return step % self.config.interval == 0 or bool(checkpoint) or pending

    def _ranks(self, positions: list[int]) -> tuple[list[int], list[str]]:
        return [self.replicas.ranks[p] for p in positions], [self.replicas.hosts[p] for p in positions]

    # ----------------------------------------------------------------------------------------------
    def after_optimizer_step(self, ctx: HookContext) -> None:
        self._setup(ctx)
        step = ctx.step
        self.injector.after_step(step, ctx.model)
        for record in self.injector.log[self._injections_logged:]:  # this step's flips and Newton–Schulz faults
            # Only the injecting rank knows; it writes the line itself.
            self.events.record("sdc_fault_injected", record["step"], write=True, ranks=[record["rank"]],
                               parameters=[record["parameter"]], detail=record)
        self._injections_logged = len(self.injector.log)
        for kind, fields in self.precheck.take_events():
            self.events.record(kind, fields.pop("step"), **fields)
        if self.owner is not None:
            for kind, fields in self.owner.after_step(step):
                self.events.record(kind, step, **fields)
                self._react_owner(ctx, fields)
        if self.config.enabled and self._is_check_step(step) and ctx.rollback_reason is None:
            self._check(ctx)
        ctx.log({"sdc/checks": float(self.checks), "sdc/rollbacks": float(self.rollbacks),
                 "sdc/skipped_steps": float(self.precheck.skipped), **self.events.metrics()})
        self.watchdog.progress(step)
        if step >= self.train.steps and ctx.rollback_reason is None:
            self.watchdog.stop()

    def _check(self, ctx: HookContext) -> None:
        step = ctx.step
        result = self.checker.check(ctx.model, step)
        self.checks += 1
        self.last_result = result
        ctx.log({"sdc/check_ms": result.seconds * 1000.0})
        if result.check_faults:
            ranks, hosts = self._ranks(result.check_faults)
            self.events.record("sdc_check_fault", step, ranks=ranks, hosts=hosts, action="recheck",
                               detail="a second fingerprint of unchanged weights differed")
            self._say(f"step {step}: fingerprinting the same weights twice gave different results on "
                      f"{self.replicas.names(result.check_faults)}")
        verdict, pending = result.verdict, self.pending
        if pending is not None and step == pending.step:
            self.pending = None
            self._conclude_escalation(ctx, pending, result)
            return
        if pending is not None and not verdict.agreed:
            self.pending = None  # a new disagreement during the replay supersedes the old one
        if verdict.agreed:
            self.verified = (step, result.names, result.local)
            if self.expected is not None and self.expected[0] == step:
                digest = table_hash(result.local)
                self.events.record("sdc_recovered", step, digest=digest, matches_healthy=digest == self.expected[1])
                self.expected = None
            return
        policy = self.config.policy
        if verdict.resolved:
            faulty = verdict.faulty_replicas()
            ranks, hosts = self._ranks(list(faulty))
            parameters = sorted({name for names in faulty.values() for name in names})
            healthy = table_hash(consensus(result.gathered, verdict))
            self.events.record("sdc_corruption", step, ranks=ranks, hosts=hosts, parameters=parameters,
                               action=policy, replicas=self.replicas.size, healthy_digest=healthy)
            if policy == "rollback":
                self.expected = (step, healthy)
            what = (f"silent data corruption after step {step}: {self.replicas.names(list(faulty))} disagree(s) with "
                    f"the other {self.replicas.size - len(faulty)} replicas in {len(parameters)} parameter(s) "
                    f"({_listed(parameters)})")
            self._say(what)
            if policy == "fail":
                raise SDCError(f"{what}; exclude the node", ranks=ranks, hosts=hosts, parameters=parameters, step=step)
            if policy == "rollback":
                self._rollback(ctx, f"{self.replicas.names(list(faulty))} corrupted after step {step}")
            return
        suspects = verdict.suspects()
        ranks, hosts = self._ranks(suspects)
        parameters = [vote.name for vote in verdict.unresolved]
        escalate = policy != "log" and self.config.escalate and self.last_checkpoint is not None
        self.events.record("sdc_unresolved", step, ranks=ranks, hosts=hosts, parameters=parameters,
                           action="escalate" if escalate else policy, replicas=self.replicas.size)
        what = (f"replicas disagree after step {step} with no majority ({self.replicas.names(suspects)}) in "
                f"{len(parameters)} parameter(s) ({_listed(parameters)})")
        self._say(what)
        if policy == "log":
            return
        if escalate:
            first = {s: r for s, r in self.precheck.rows.items() if s > self.last_checkpoint}
            self.pending = Escalation(step, result.gathered, parameters, suspects, first)
            self._rollback(ctx, f"no majority after step {step}; replaying from step {self.last_checkpoint} to tell "
                                f"a transient fault from a persistent one")
            return
        raise SDCError(f"{what}; " + ("escalation is disabled" if not self.config.escalate else
                                       "there is no verified checkpoint to replay from") +
                       " — both nodes are suspect", ranks=ranks, hosts=hosts, parameters=parameters, step=step)

    def _conclude_escalation(self, ctx: HookContext, pending: Escalation, result: CheckResult) -> None:
        step, verdict = pending.step, result.verdict
        if verdict.agreed:
            changed = compare_runs(pending.gathered, result.gathered)
            origin, evidence = self._transient_origin(pending, changed)
            ranks, hosts = self._ranks(origin)
            self.events.record("sdc_transient", step, ranks=ranks, hosts=hosts, parameters=pending.parameters,
                               action=self.config.policy, digest=table_hash(result.local),
                               replicas_reproduced=self.replicas.size - len(changed),
                               localized=evidence is not None, detail=evidence or _UNLOCALIZED)
            if evidence is not None:
                what = (f"the replay of step {step} agrees on every replica: the earlier disagreement was a transient "
                        f"fault on {self.replicas.names(origin)} ({_listed(pending.parameters)}; {evidence})")
            else:
                what = (f"the replay of step {step} agrees on every replica: the earlier disagreement was a transient "
                        f"fault ({_listed(pending.parameters)}), but {_UNLOCALIZED}; suspects: "
                        f"{self.replicas.names(origin)}")
            self._say(what)
            self.verified = (step, result.names, result.local)
            if self.config.policy == "fail":
                advice = "exclude the node" if evidence is not None else "test every suspect node"
                raise SDCError(f"{what}; {advice}", ranks=ranks, hosts=hosts, parameters=pending.parameters, step=step)
            return
        faulty = verdict.faulty_replicas() if verdict.resolved else {}
        positions = list(faulty) if faulty else verdict.suspects()
        ranks, hosts = self._ranks(positions)
        parameters = [vote.name for vote in verdict.votes]
        self.events.record("sdc_persistent", step, ranks=ranks, hosts=hosts, parameters=parameters, action="fail")
        who = (f"{self.replicas.names(positions)} computed wrong results again" if faulty else
               f"cannot tell which of {self.replicas.names(positions)} is wrong with {self.replicas.size} replicas")
        raise SDCError(f"persistent silent data corruption: the replay of step {step} disagrees again; {who} "
                       f"({_listed(parameters)}); exclude the suspect node(s)", ranks=ranks, hosts=hosts,
                       parameters=parameters, step=step)

    def _transient_origin(self, pending: Escalation, changed: list[int]) -> tuple[list[int], str | None]:
        """Replica positions a transient fault began on, and the evidence (None: the replicas cannot tell)."""
        found = first_divergence(pending.pre_reduction, self.precheck.rows)
        if found is not None:
            step, positions = found
            return positions, f"its own loss and gradients before the reduction first differed from the replay in step {step}"
        if changed and len(changed) < self.replicas.size:
            return changed, "its weights alone differed from the replay"
        return changed or list(range(self.replicas.size)), None

    def _rollback(self, ctx: HookContext, reason: str) -> None:
        if self.last_checkpoint is None:
            raise SDCError(f"{reason}; sdc.policy is rollback but there is no verified checkpoint yet "
                           f"(lower train.checkpoint_every)", step=ctx.step)
        if self.rollbacks >= self.max_rollbacks:
            raise SDCRetriesExhausted(f"{reason}; already rolled back {self.rollbacks} time(s) "
                                      f"(sdc.max_rollbacks / train.max_rollbacks)", step=ctx.step)
        self.rollbacks += 1
        ctx.request_rollback(f"sdc: {reason}")

    def _react_owner(self, ctx: HookContext, fields: dict[str, Any]) -> None:
        policy = self.config.policy
        what = fields["detail"]
        self._say(what)
        if policy == "fail":
            raise SDCError(f"{what}; exclude the node", ranks=fields.get("ranks"), hosts=fields.get("hosts"),
                           parameters=fields.get("parameters"), step=ctx.step)
        if policy == "rollback" and ctx.rollback_reason is None:
            self._rollback(ctx, f"owner rank {fields['owner']}'s Newton–Schulz result for "
                                f"{_listed(fields['parameters'], 1)} was wrong in step {ctx.step}")

    # ----------------------------------------------------------------------------------------------
    def before_checkpoint_save(self, ctx: HookContext) -> None:
        self._setup(ctx)
        step = ctx.step
        self.last_checkpoint = step
        self.precheck.forget_through(step)
        if not self.config.enabled:
            return
        if self.verified is None or self.verified[0] != step:
            result = self.checker.check(ctx.model, step)
            self.checks += 1
            if result.verdict.agreed:
                self.verified = (step, result.names, result.local)
            elif self.config.policy == "log":
                self.events.record("sdc_unverified_checkpoint", step, parameters=[v.name for v in result.verdict.votes])
            else:
                raise SDCError(f"refusing to write checkpoint step {step}: the replicas disagree in "
                               f"{len(result.verdict.votes)} parameter(s)", step=step)
        if self.verified is not None and self.verified[0] == step:
            ctx.sdc_digest = self._digest(self.verified[1], self.verified[2], step)
        else:
            ctx.sdc_digest = None
        self.watchdog.progress(step)

    def after_checkpoint_load(self, ctx: HookContext) -> None:
        self._setup(ctx)
        step = ctx.step
        self.last_checkpoint = step
        self.precheck.at_step(step)
        if self.owner is not None:
            self.owner.step = step + 1
        if not self.config.enabled:
            return
        result = self.checker.check(ctx.model, step)
        self.checks += 1
        stored = self._stored_digest(ctx.sdc_digest, step)
        if stored:
            stored_ok = []
            for position in range(self.replicas.size):
                differs = differing_parameters(result.names, result.gathered[position], stored)
                stored_ok.append(differs)
            mismatched = [p for p, differs in enumerate(stored_ok) if differs]
            if mismatched:
                parameters = sorted({n for p in mismatched for n in stored_ok[p]})
                ranks, hosts = self._ranks(mismatched)
                self.events.record("sdc_restore_mismatch", step, ranks=ranks, hosts=hosts, parameters=parameters)
                if len(mismatched) == self.replicas.size:
                    raise LagoonError(f"checkpoint step {step}: the restored weights differ from the digest they were "
                                      f"verified with in {len(parameters)} parameter(s) ({_listed(parameters)}) on "
                                      f"every rank; the checkpoint was changed after it was written")
                raise SDCError(f"{self.replicas.names(mismatched)} restored checkpoint step {step} wrongly: "
                               f"{_listed(parameters)} differ from the verified digest; exclude the node",
                               ranks=ranks, hosts=hosts, parameters=parameters, step=step)
        if not result.verdict.agreed:
            suspects = result.verdict.suspects()
            ranks, hosts = self._ranks(suspects)
            raise SDCError(f"replicas disagree right after loading checkpoint step {step} "
                           f"({self.replicas.names(suspects)})", ranks=ranks, hosts=hosts, step=step)
        self.verified = (step, result.names, result.local)
        self.watchdog.progress(step)


    def _digest(self, names: list[str], local: torch.Tensor, step: int) -> str:
        """The verified digest a checkpoint stores: this replica's, or under sharding every shard's, joined by
        "|" in shard order (each rank fingerprints only the rows it holds)."""
        if self.shards is None:
            return encode_digest(names, local)
        tables = self.shards.all_gather(local, "checkpoint digest", step)
        return "|".join(encode_digest(names, table) for table in tables)

    def _stored_digest(self, digest: str | None, step: int) -> str | None:
        """The part of a stored digest this rank's shard must reproduce; None when there is nothing to compare:
        no digest, or one written by another sharding (a resume across layouts re-verifies across replicas)."""
        if not digest:
            return None
        parts = digest.split("|")
        count = 1 if self.shards is None else self.shards.size
        if len(parts) != count:
            self.events.record("sdc_digest_layout_changed", step, stored_shards=len(parts), shards=count)
            return None
        return parts[0 if self.shards is None else self.shards.position]


def sdc_hooks(config: Any) -> list[Hooks]:
    """The SDC hooks a run config asks for (empty when there is no enabled ``[sdc]`` section)."""
    sdc = getattr(config, "sdc", None)
    if sdc is None or not (sdc.enabled or sdc.faults):
        return []
    return [SDCHooks(sdc)]
