"""Exact resume, the coordinator's side: journal entries taken and applied, backups tracked.

`Recovery` is what makes a job resumable, owned by the engine: the journal, the
backups each barrier waits for, the restarts left and the failures so far.
`capture` turns the engine's state after an epoch barrier into a `JournalEntry`;
`restore_callbacks` and `apply_to_recorder` set a fresh attempt back to one;
`BackupTracker` knows which epochs every worker has backed up and which entries
are written, and says when an epoch can be committed. `restartable` says which
failures a restart can cure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from distcb.callbacks.extension import Stateful, Syncable
from distcb.coordinator.failure_policy import describe
from distcb.coordinator.journal import Journal, JournalEntry, describe_job, remove_temporaries
from distcb.coordinator.model_proxy import DecisionRecord, DecisionRecorder
from distcb.protocol.decisions import AnyDecision, BackupModel, Decision, EffectPoint
from distcb.protocol.errors import DistcbError, RestartsExhausted, WorkerLostError

logger = logging.getLogger("distcb.coordinator")


def restartable(error: BaseException) -> bool:
    """A worker that went away (killed, evicted, silent, preempted): a restart from the
    backups cures it. A worker whose code raised, a raising callback, a protocol or
    aggregation error would fail again."""
    return isinstance(error, WorkerLostError) and error.retryable


def callback_states(callbacks: Sequence[Any]) -> list[dict[str, Any] | None]:
    """Each callback's `get_state()` (None for one that keeps none). Call on the callback
    thread; sinks that write on their own thread are synced first (`sync()`), so that
    what the state counts is on disk."""
    states: list[dict[str, Any] | None] = []
    for callback in callbacks:
        if isinstance(callback, Syncable):
            callback.sync()
        states.append(callback.get_state() if isinstance(callback, Stateful) else None)
    return states


def restore_callbacks(callbacks: Sequence[Any], states: Sequence[dict[str, Any] | None]) -> None:
    """`set_state` on every callback that has a state (call after `attach`)."""
    for callback, state in zip(callbacks, states, strict=True):
        if state is not None and isinstance(callback, Stateful):
            callback.set_state(state)


def records_json(records: Sequence[DecisionRecord]) -> list[dict[str, Any]]:
    return [
        {"decision": msgspec.to_builtins(r.decision), "made_by": r.made_by, "time": r.time}
        for r in records
    ]


def records_from_json(data: Sequence[dict[str, Any]]) -> list[DecisionRecord]:
    return [
        DecisionRecord(
            msgspec.convert(item["decision"], AnyDecision),
            str(item["made_by"]),
            float(item["time"]),
        )
        for item in data
    ]


def capture(
    *,
    epoch: int,
    states: list[dict[str, Any] | None],
    log: Sequence[DecisionRecord],
    recorder: DecisionRecorder,
    learning_rate: float | None,
    pending: Sequence[Decision],
    global_step: int,
    stopping: bool,
) -> JournalEntry:
    """The journal entry of the barrier of `epoch`."""
    return JournalEntry(
        epoch=epoch,
        callbacks=states,
        decisions=records_json(log),
        learning_rate=learning_rate,
        snapshots=sorted(recorder.outstanding),
        snapshot_counter=recorder.snapshot_counter,
        pending=list(pending),
        global_step=global_step,
        stopping=stopping,
    )


def apply_to_recorder(entry: JournalEntry, recorder: DecisionRecorder) -> None:
    recorder.snapshot_counter = entry.snapshot_counter
    recorder.outstanding = set(entry.snapshots)


@dataclass
class BackupTracker:
    """Which ranks backed up which epoch, and which entries are on disk."""

    reported: dict[int, dict[int, str | None]] = field(default_factory=dict)  # epoch -> rank
    written: set[int] = field(default_factory=set)
    committed: list[int] = field(default_factory=list)
    started_s: dict[int, float] = field(default_factory=dict)

    def expect(self, epoch: int) -> None:
        self.started_s[epoch] = time.monotonic()

    def report(self, epoch: int, rank: int, error: str | None) -> None:
        self.reported.setdefault(epoch, {})[rank] = error

    def complete(self, epoch: int, ranks: set[int]) -> bool:
        """Every rank in `ranks` backed up `epoch` without an error, and its entry is written."""
        got = self.reported.get(epoch, {})
        return (
            epoch in self.written
            and epoch not in self.committed
            and all(r in got and got[r] is None for r in ranks)
        )

    def commit(self, epoch: int) -> None:
        self.committed.append(epoch)
        self.reported = {e: v for e, v in self.reported.items() if e > epoch}
        self.written = {e for e in self.written if e >= epoch}


class Recovery:
    """The journal of a resumable job, the backups its barriers wait for, and its restarts.

    Args:
        state_dir: the journal's directory.
        world_size, callbacks: what the job is (a journal of another job is refused).
        max_restarts: restartable failures allowed before the job fails.
        resume: go on from a committed entry found in `state_dir`.
        backup_every_epochs: a backup at every this many barriers (and at the last).
    """

    def __init__(
        self,
        state_dir: str,
        *,
        world_size: int,
        callbacks: Sequence[Any],
        max_restarts: int,
        resume: bool,
        backup_every_epochs: int,
    ):
        self.journal = Journal(state_dir, describe_job(world_size, callbacks))
        self.max_restarts = max_restarts
        self.resume = resume
        self.backup_every_epochs = backup_every_epochs
        self.failures: list[BaseException] = []  # the restartable failures so far
        self.attempt = 0
        self.committed_epoch: int | None = None
        self.initial_states: list[dict[str, Any] | None] | None = None  # before any barrier
        self.backups = BackupTracker()
        self._snapshots_of: dict[int, set[int]] = {}  # journaled epoch -> snapshots it holds
        self._committed_snapshots: set[int] = set()  # held by the newest committed barrier
        # One writer, in order, off the event loop (entries are fsynced).
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="distcb-journal"
        )

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    async def open(self) -> JournalEntry | None:
        """The committed entry to resume from, or None to start afresh (a new journal).

        Raises:
            JournalMismatchError: the directory holds another job's journal.
            DistcbError: it holds this job's journal and `resume` is False.
        """
        journal = self.journal
        # What a killed write left (never read: no entry name); nothing writes here yet.
        await asyncio.to_thread(remove_temporaries, journal.directory)
        if await asyncio.to_thread(journal.check_job):
            entry = await asyncio.to_thread(journal.latest)
            if entry is not None and not self.resume:
                raise DistcbError(
                    f"{journal.directory} holds this job's journal (committed up to epoch "
                    f"{entry.epoch}): pass resume=True to go on from it, or use another "
                    "run directory to start over"
                )
            if entry is not None:
                self.committed_epoch = entry.epoch
                self._committed_snapshots = set(entry.snapshots)
                logger.info("resuming after epoch %d from %s", entry.epoch, journal.directory)
                return entry
            if self.resume:
                # An earlier launcher of this job committed nothing: its sinks go back to
                # how they were before it began (its event files and rows removed).
                self.initial_states = await asyncio.to_thread(journal.initial)
        await asyncio.to_thread(journal.start)
        return None

    def remember_initial(self, states: list[dict[str, Any] | None]) -> None:
        """The callbacks' states right after the job's first on_train_begin: kept for a
        restart before the first commit, and written to the journal (durable before any
        sink writes) for a resumed launcher. Call on the callback thread."""
        self.initial_states = states
        self.journal.write_initial(states)

    def may_restart(self, error: BaseException) -> bool:
        return restartable(error) and len(self.failures) < self.max_restarts

    def final_error(self, error: BaseException) -> BaseException:
        """What the job raises for `error`, a failure no restart follows."""
        if self.max_restarts and restartable(error):
            return RestartsExhausted([*self.failures, error], self.max_restarts)
        return error

    async def next_attempt(self, failure: BaseException) -> JournalEntry | None:
        """After an attempt that ended in a restart: the entry the next one resumes from."""
        self.failures.append(failure)
        entry = await asyncio.to_thread(self.journal.latest)
        logger.warning(
            "restart %d of %d after %s: going on after %s",
            len(self.failures),
            self.max_restarts,
            describe(failure),
            f"epoch {entry.epoch}" if entry is not None else "nothing (from the start)",
        )
        self.attempt += 1
        self.backups = BackupTracker()
        self._snapshots_of = {}
        self._committed_snapshots = set(entry.snapshots) if entry is not None else set()
        return entry

    def backup_decision(
        self, epoch: int, stopping: bool, held_snapshots: set[int]
    ) -> BackupModel | None:
        """The backup of the barrier of `epoch`, when one is due (every
        `backup_every_epochs`, and at the last barrier)."""
        if not stopping and (epoch + 1) % self.backup_every_epochs:
            return None
        # Snapshot files a rollback may still need stay: those held now, and those the
        # newest committed barrier holds.
        keep = held_snapshots | self._committed_snapshots
        return BackupModel(
            at=EffectPoint.epoch_end(epoch), epoch=epoch, keep_snapshots=tuple(sorted(keep))
        )

    async def write(self, entry: JournalEntry) -> bool:
        """`write_now` on the journal's thread (one writer, in order, off the event loop)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self.write_now, entry)

    def write_now(self, entry: JournalEntry) -> bool:
        """Write `entry` (fsynced); False, logged, when the disk refused."""
        try:
            self.journal.write(entry)
        except OSError as exc:
            logger.error("could not write the journal entry of epoch %d: %s", entry.epoch, exc)
            return False
        self.backups.written.add(entry.epoch)
        self._snapshots_of[entry.epoch] = set(entry.snapshots)
        return True

    def backed_up(self, epoch: int, rank: int, error: str | None) -> None:
        if error is not None:
            logger.warning(
                "rank %d could not back up epoch %d (%s): the job cannot go on from that "
                "epoch after a failure",
                rank,
                epoch,
                error,
            )
        self.backups.report(epoch, rank, error)

    def commit_due(self, epoch: int, ranks: set[int]) -> bool:
        """Whether `epoch` is to be committed now: its entry is written and every rank in
        `ranks` backed it up (once: it then counts as committing)."""
        if not self.backups.complete(epoch, ranks):
            return False
        self.backups.commit(epoch)
        return True

    async def maybe_commit(self, epoch: int, ranks: set[int]) -> None:
        """Commit `epoch` if it is due (`commit_due`)."""
        if self.commit_due(epoch, ranks):
            await self.commit(epoch)

    async def commit(self, epoch: int) -> None:
        """`commit_now` on the journal's thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self.commit_now, epoch)

    def commit_now(self, epoch: int) -> None:
        """Commit the entry of `epoch` (`commit_due` said so); logged when the disk refused."""
        try:
            self.journal.commit(epoch)
        except OSError as exc:
            logger.error("could not commit the journal entry of epoch %d: %s", epoch, exc)
            return
        self.committed_epoch = epoch
        self._committed_snapshots = self._snapshots_of.pop(epoch, set())
        self._snapshots_of = {e: s for e, s in self._snapshots_of.items() if e > epoch}
