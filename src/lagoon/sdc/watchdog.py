"""A background watchdog: a hung or dead rank ends the job with a clear error instead of a silent deadlock.

Every rank leaves two marks in the job's rendezvous store (the key-value store torchrun and
``init_process_group`` already run):

- ``progress/RANK`` = how many quiet points (optimizer steps) this rank has passed, and the step;
- ``heartbeat/RANK`` = a counter its watchdog thread bumps every ``timeout_s / 8`` seconds.

The watchdog thread of each rank also reads the others' marks, on its own connection to the store, and
ends the process (``os._exit``, after one line on stderr and an event in DIR/events.jsonl) when

- this rank has passed no quiet point for ``timeout_s``: ranks whose progress is behind are named as
  hung (a rank that is itself behind its peers names itself); exit code 93;
- a peer's heartbeat has not moved for ``timeout_s``: that rank is named as dead or frozen; exit 94.

Counters are compared, never clocks, so hosts need no synchronised time. While it runs, the watchdog
also turns a collective that failed because a peer vanished (an uncaught error on the training thread)
into the same one-line verdict and exit code 94. It stops when told (at the run's last step), and by itself once
the training thread has left `run_training`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch.distributed as dist

from lagoon.sdc.errors import EXIT_HUNG, EXIT_PEER_LOST
from lagoon.sdc.replicas import ReplicaGroup

PREFIX = "lagoon-sdc/"


def default_store() -> Any | None:
    """The default process group's store, or None (single process, or a torch without it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except (ImportError, RuntimeError, ValueError):
        return None


def own_connection(store: Any) -> Any:
    """A separate client connection to the same store, for the watchdog thread (``Store.clone``), else `store`
    itself (TCPStore clients serialise their operations, so sharing one is safe, only slower)."""
    try:
        return store.clone()
    except (AttributeError, RuntimeError, NotImplementedError):
        return store


class Watchdog:
    """See the module docstring. `on_fire(kind, message, exit_code)` records the verdict before the exit."""

    def __init__(self, replicas: ReplicaGroup, timeout_s: float,
                 on_fire: Callable[[str, str, int], None] | None = None, exit_process: bool = True):
        self.replicas = replicas
        self.timeout_s = float(timeout_s)
        self.on_fire = on_fire
        self.exit_process = exit_process
        self.period = max(0.05, min(5.0, self.timeout_s / 8))
        self.store = None
        self.reader = None
        self.count = 0
        self.step = 0
        self.last_progress = time.monotonic()
        self.fired: tuple[str, str, int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._owner_thread = threading.get_ident()
        self._beats_seen: dict[int, tuple[str | None, float]] = {}
        self._previous_excepthook = None

    # ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        store = default_store()
        if store is None or self.replicas.size == 1:
            return
        self.store = dist.PrefixStore(PREFIX, store)
        self.reader = dist.PrefixStore(PREFIX, own_connection(store))
        self.replicas.describe_peers = self.describe
        self._owner_thread = threading.get_ident()
        for key in (f"verdict/{self.replicas.rank}", f"heartbeat/{self.replicas.rank}"):
            try:  # marks left by an earlier run over the same store
                self.store.delete_key(key)
            except Exception:
                pass
        self.progress(self.step)
        self._thread = threading.Thread(target=self._run, name="lagoon-sdc-watchdog", daemon=True)
        self._thread.start()
        self._previous_excepthook = sys.excepthook
        sys.excepthook = self._excepthook

    def stop(self) -> None:
        self._stop.set()
        if self._previous_excepthook is not None and sys.excepthook == self._excepthook:
            sys.excepthook = self._previous_excepthook
        self._previous_excepthook = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def progress(self, step: int) -> None:
        """Called at every quiet point (and around checkpoint saves and loads) on the training thread."""
        self.count += 1
        self.step = step
        self.last_progress = time.monotonic()
        if self.store is not None:
            self.store.set(f"progress/{self.replicas.rank}", f"{self.count}:{step}")

    # ----------------------------------------------------------------------------------------------
    def _peer_marks(self, key: str) -> dict[int, str | None]:
        marks: dict[int, str | None] = {}
        for position, rank in enumerate(self.replicas.ranks):
            if position == self.replicas.position:
                continue
            name = f"{key}/{rank}"
            marks[position] = self.reader.get(name).decode() if self.reader.check([name]) else None
        return marks

    def describe(self, positions: list[int]) -> str:
        """What the store says about the given replica positions (for error messages)."""
        if self.reader is None:
            return ""
        try:
            marks = self._peer_marks("progress")
        except Exception:  # the store itself is gone: say nothing rather than hide the real error
            return ""
        parts = []
        for position in positions:
            mark = marks.get(position)
            step = mark.split(":")[1] if mark else "none"
            parts.append(f"{self.replicas.name(position)} last reached step {step}")
        return "; ".join(parts)

    def _run(self) -> None:
        beat = 0
        while not self._stop.wait(self.period):
            if not self._training_thread_in_loop():
                self.stop()
                return
            try:
                beat += 1
                self.reader.set(f"heartbeat/{self.replicas.rank}", str(beat))
                verdict = self._check(time.monotonic())
            except Exception as error:  # the rendezvous store is unreachable: its host is gone
                verdict = ("peer_lost", f"lost the job's rendezvous store ({error}); the rank hosting it is gone",
                           EXIT_PEER_LOST)
            if verdict is not None and not self._stop.is_set():
                self._fire(*verdict)
                return

    def _check(self, now: float) -> tuple[str, str, int] | None:
        verdicts = self._peer_verdicts()
        if verdicts:
            position, (code, kind, message) = next(iter(verdicts.items()))
            return (kind, f"{message} (reported by {self.replicas.name(position)}, which then ended)", code)
        beats = self._peer_marks("heartbeat")
        for position, value in beats.items():
            previous = self._beats_seen.get(position)
            if previous is None or previous[0] != value:
                self._beats_seen[position] = (value, now)
            elif value is not None and now - previous[1] > self.timeout_s:
                return ("peer_lost", f"{self.replicas.name(position)} is dead or frozen: no heartbeat for "
                                     f"{now - previous[1]:.0f} s (after step {self.step} here)", EXIT_PEER_LOST)
        if now - self.last_progress <= self.timeout_s:
            return None
        marks = self._peer_marks("progress")
        counts = {p: int(m.split(":")[0]) if m else 0 for p, m in marks.items()}
        behind = sorted(p for p, c in counts.items() if c < self.count)
        waited = f"{now - self.last_progress:.0f} s"
        limit = f"sdc.timeout_s = {self.timeout_s:g}"
        if behind:
            return ("hung", f"{self.replicas.names(behind)} hung: no progress past step {self.step} for {waited} "
                            f"({limit})", EXIT_HUNG)
        if any(c > self.count for c in counts.values()):
            return ("hung", f"{self.replicas.name(self.replicas.position)} hung: no progress past step {self.step} "
                            f"for {waited} while its peers moved on ({limit})", EXIT_HUNG)
        return ("hung", f"no rank got past step {self.step} for {waited}: a collective is stuck, or one step takes "
                        f"longer than {limit}", EXIT_HUNG)

    def _fire(self, kind: str, message: str, exit_code: int) -> None:
        self.fired = (kind, message, exit_code)
        try:  # leave the verdict for the peers, who will see this rank vanish next
            self.reader.set(f"verdict/{self.replicas.rank}", f"{exit_code}|{kind}|{message}")
        except Exception:
            pass
        if self.on_fire is not None:
            try:
                self.on_fire(kind, message, exit_code)
            except Exception:
                pass
        print(f"lagoon: error: {message}", file=sys.stderr, flush=True)
        if self.exit_process:
            sys.stdout.flush()
            os._exit(exit_code)

    # ----------------------------------------------------------------------------------------------
    def _training_thread_in_loop(self) -> bool:
        frame = sys._current_frames().get(self._owner_thread)
        while frame is not None:
            if frame.f_code.co_name == "run_training" and frame.f_globals.get("__name__") == "lagoon.train.loop":
                return True
            frame = frame.f_back
        return False

    def _excepthook(self, kind, value, traceback) -> None:
        """An uncaught distributed error while a peer is gone becomes one line naming that peer."""
        if self.reader is not None and isinstance(value, (RuntimeError, dist.DistError)):
            deadline = time.monotonic() + min(self.timeout_s, 3 * self.period + 1)
            while time.monotonic() < deadline:
                verdicts = self._peer_verdicts()
                if verdicts:  # a peer diagnosed itself (or someone) before it ended: pass its verdict on
                    position, (code, verdict_kind, message) = next(iter(verdicts.items()))
                    self._fire(verdict_kind, f"{message} (reported by {self.replicas.name(position)}, which then "
                                             f"ended)", code)
                    return
                gone = self._gone_peers()
                if gone:
                    first = str(value).strip().splitlines()[0] if str(value).strip() else kind.__name__
                    self._fire("peer_lost", f"{self.replicas.names(gone)} is gone (its heartbeat stopped) and a "
                                            f"collective after step {self.step} failed: {first}", EXIT_PEER_LOST)
                    return
                time.sleep(self.period)
        (self._previous_excepthook or sys.__excepthook__)(kind, value, traceback)

    def _peer_verdicts(self) -> dict[int, tuple[int, str, str]]:
        try:
            marks = self._peer_marks("verdict")
        except Exception:
            return {}
        verdicts = {}
        for position, mark in marks.items():
            if mark:
                code, kind, message = mark.split("|", 2)
                verdicts[position] = (int(code), kind, message)
        return verdicts

    def _gone_peers(self) -> list[int]:
        try:
            beats = self._peer_marks("heartbeat")
        except Exception:
            return []
        now, gone = time.monotonic(), []
        for position, value in beats.items():
            previous = self._beats_seen.get(position)
            if previous is None or previous[0] != value:
                self._beats_seen[position] = (value, now)
            elif now - previous[1] > 2.5 * self.period:
                gone.append(position)
        return gone
