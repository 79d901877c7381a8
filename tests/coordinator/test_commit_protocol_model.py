"""The commit protocol (docs/commit-protocol.md) as a state machine, with a crash between any
two steps: a restart always finds a committed barrier that every sink and every rank agrees
with.

The steps are the real ones, on real files in a temporary directory: the coordinator's
`Recovery` (journal entries written atomically, commits once the entry is written and every
rank reported its backup), each worker's `DecisionApplier` carrying out `BackupModel`
through the real `BackupStore`, and a real `CSVLogger` and `TensorBoard` as the sinks. Only
the model is a stand-in (its state is the last epoch it trained). Hypothesis interleaves
the steps of each barrier in every order the engine allows, and may crash the whole job
between any two, also in the middle of a backup or of a journal write (what a SIGKILL
leaves: a temporary directory or file). After a crash the job restarts as a resumed
launcher does and checks:

* the newest committed entry is at most the last barrier released, and no older than the
  newest barrier whose steps all completed (nothing committed is lost);
* every rank restores its backup of that barrier, and it holds that epoch's state;
* the CSV, cut back by the restored CSVLogger, holds exactly the header and the rows up to
  that barrier, byte for byte as an uninterrupted run's;
* TensorBoard, reading the event files the restored sink cut back, sees exactly the scalars
  (epoch, batch and evaluation ones) of an uninterrupted run up to that barrier, also after
  a new launcher that found nothing committed (the initial states in the journal);

and when the job runs to its end, the CSV and the TensorBoard scalars equal the
uninterrupted run's.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from distcb.callbacks import CSVLogger, TensorBoard
from distcb.coordinator.journal import JournalEntry
from distcb.coordinator.resume import Recovery, callback_states
from distcb.protocol.decisions import BackupModel, EffectPoint
from distcb.protocol.messages import BackedUp, Resume
from distcb.worker.apply import DecisionApplier
from distcb.worker.backup import BackupStore
from tests.helpers.tensorboard_scalars import read_scalars

RANKS = (0, 1)
EPOCHS = 5


def logs_of(epoch: int) -> dict[str, float]:
    return {"loss": 1.0 / (epoch + 1), "val_loss": 2.0 / (epoch + 2)}


@dataclass(frozen=True)
class Captured:
    """A model's state as of its barrier, written later by the worker's backup writer."""

    rank: int
    trained: int
    detached: ClassVar[bool] = True

    def write(self, directory: str) -> dict[str, dict[str, Any]]:
        with open(os.path.join(directory, "state.json"), "w") as handle:
            json.dump({"rank": self.rank, "trained": self.trained}, handle)
        return {}


class Model:
    """A worker's model, reduced to what a backup must carry: the last epoch trained."""

    snapshot_suffix = ".json"

    def __init__(self, rank: int):
        self.rank = rank
        self.trained = -1

    def capture_state(self) -> Captured:
        return Captured(self.rank, self.trained)

    def load_state(self, directory: str) -> None:
        with open(os.path.join(directory, "state.json")) as handle:
            state = json.load(handle)
        assert state["rank"] == self.rank
        self.trained = state["trained"]

    def stop_training(self) -> None: ...

    def set_learning_rate(self, value: float) -> None: ...

    def get_weights(self) -> Any:
        return self.trained

    def set_weights(self, weights: Any) -> None:
        self.trained = weights

    def save(self, filepath: str, *, weights_only: bool, overwrite: bool) -> None: ...

    def save_snapshot(self, weights: Any, path: str) -> None: ...

    def load_snapshot(self, path: str) -> Any: ...


def expected_csv(last_epoch: int) -> bytes:
    """The CSV of an uninterrupted run after the barrier of `last_epoch` (-1: empty)."""
    directory = tempfile.mkdtemp(prefix="distcb-csv-")
    try:
        path = os.path.join(directory, "log.csv")
        sink = CSVLogger(path)
        sink.on_train_begin()
        for epoch in range(last_epoch + 1):
            sink.on_epoch_end(epoch, logs_of(epoch))
        sink.on_train_end()
        with open(path, "rb") as handle:
            return handle.read()
    finally:
        shutil.rmtree(directory)


EXPECTED = {epoch: expected_csv(epoch) for epoch in range(-1, EPOCHS)}


def train_epoch(sink: TensorBoard, epoch: int) -> None:
    """What the coordinator's TensorBoard sees of one epoch: a batch, then the epoch end."""
    sink.on_epoch_begin(epoch)
    sink.on_train_batch_begin(0)
    sink.on_train_batch_end(0, {"loss": 3.0 / (epoch + 1)})
    sink.on_epoch_end(epoch, logs_of(epoch))


def scalars(log_dir: str) -> dict[str, Any]:
    return {run: tags for run, tags in read_scalars(log_dir).items() if tags}


def expected_scalars(last_epoch: int) -> dict[str, Any]:
    """What TensorBoard reads of an uninterrupted run after the barrier of `last_epoch`."""
    directory = tempfile.mkdtemp(prefix="distcb-tb-")
    try:
        sink = TensorBoard(directory, update_freq="batch", write_graph=False)
        sink.on_train_begin()
        for epoch in range(last_epoch + 1):
            train_epoch(sink, epoch)
        sink.on_train_end()
        return scalars(directory)
    finally:
        shutil.rmtree(directory)


EXPECTED_SCALARS = {epoch: expected_scalars(epoch) for epoch in range(-1, EPOCHS)}


class CommitProtocol(RuleBasedStateMachine):
    """One job of two ranks, crashed and restarted at will."""

    @initialize()
    def begin(self) -> None:
        self.root = tempfile.mkdtemp(prefix="distcb-commit-model-")
        self.run_dir = self.root
        self.csv_path = os.path.join(self.root, "log.csv")
        self.tb_dir = os.path.join(self.root, "tb")
        self.released = -1  # the newest barrier whose workers were released (rows written)
        self.complete = -1  # the newest barrier whose every step was done
        self.restarts = 0
        self._start(resume=False)

    def teardown(self) -> None:
        self._close_appliers()
        recovery = getattr(self, "recovery", None)
        if recovery is not None:
            recovery.close()
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ a (re)started job

    def _start(self, resume: bool) -> None:
        """What a launcher does: open the journal, set callbacks and workers back to the
        newest committed barrier, and begin (on_train_begin)."""
        self.sink = CSVLogger(self.csv_path)
        self.tb = TensorBoard(self.tb_dir, update_freq="batch", write_graph=False)
        self.recovery = Recovery(
            os.path.join(self.run_dir, "state"),
            world_size=len(RANKS),
            callbacks=[self.sink, self.tb],
            max_restarts=100,
            resume=resume,
            backup_every_epochs=1,
        )
        self._go_on(asyncio.run(self.recovery.open()))
        state = os.path.join(self.run_dir, "state")
        assert not [n for n in os.listdir(state) if n.startswith(".tmp-")]  # a killed write's

    def _go_on(self, entry: JournalEntry | None) -> None:
        """Set the sink and the workers back to `entry` (None: to how the job began)."""
        self.models = {rank: Model(rank) for rank in RANKS}
        self.appliers = {
            rank: DecisionApplier(
                self.models[rank],
                rank,
                BackupStore(os.path.join(self.run_dir, "backups"), rank, rank),
            )
            for rank in RANKS
        }
        self.resumed = -1 if entry is None else entry.epoch
        if entry is not None:
            assert entry.callbacks[0] is not None
            assert entry.callbacks[1] is not None
            self.sink.set_state(entry.callbacks[0])
            self.tb.set_state(entry.callbacks[1])
            for rank in RANKS:
                self.appliers[rank].resume(Resume(epoch=entry.epoch))
                # Every rank's backup of the committed barrier is there, and is that barrier's.
                assert self.models[rank].trained == entry.epoch
        elif self.recovery.initial_states is not None:
            # A restart before any commit, in the same launcher or a resumed one (the
            # engine's initial states, kept in the journal).
            csv_state, tb_state = self.recovery.initial_states
            assert csv_state is not None
            assert tb_state is not None
            self.sink.set_state(csv_state)
            self.tb.set_state(tb_state)
        self.sink.on_train_begin()
        self.tb.on_train_begin()
        if self.recovery.initial_states is None and entry is None:
            self.recovery.remember_initial(callback_states([self.sink, self.tb]))
        self.sink.sync()
        with open(self.csv_path, "rb") as handle:
            # The sinks agree with the barrier the job goes on from, byte for byte.
            assert handle.read() == EXPECTED[self.resumed]
        self.tb.sync()
        assert scalars(self.tb_dir) == EXPECTED_SCALARS[self.resumed]
        self.epoch = self.resumed  # the barrier in progress (or the last one done)
        self.backed: set[int] = set(RANKS)
        self.journaled = True

    def _close_appliers(self) -> None:
        for applier in getattr(self, "appliers", {}).values():
            applier.close()  # their writer threads (idle: every backup was drained)

    def _crash(self) -> None:
        """The job dies: nothing in memory survives; a resumed launcher starts again."""
        self._close_appliers()
        self.recovery.close()
        self.sink._close_file()  # a killed process leaves its rows as flushed
        self.tb._runs.close_now()  # (and its events: here all of them, a superset)
        self.restarts += 1
        self._start(resume=True)
        # Nothing committed is lost; nothing not yet released is committed.
        assert self.complete <= self.resumed <= self.released
        self.released = self.resumed
        self.complete = self.resumed

    @rule()
    def restart_in_the_same_launcher(self) -> None:
        """A worker is lost: the attempt ends (the sink closes its file) and the same
        coordinator goes on from its newest committed barrier (`Recovery.next_attempt`)."""
        self.sink.on_train_end()
        self.tb.on_train_end()
        entry = asyncio.run(self.recovery.next_attempt(RuntimeError("a worker was lost")))
        self._go_on(entry)
        assert self.complete <= self.resumed <= self.released
        self.released = self.complete = self.resumed

    # ------------------------------------------------------------------ one barrier's steps

    def _barrier_open(self) -> bool:
        return not (self.journaled and self.backed == set(RANKS))

    @precondition(lambda self: not self._barrier_open() and self.epoch + 1 < EPOCHS)
    @rule()
    def release_barrier(self) -> None:
        """Epoch e trained on every rank; the coordinator releases them with the backup
        decision and writes the CSV row (observers run after the release)."""
        self.epoch += 1
        for model in self.models.values():
            model.trained = self.epoch
        self.released = self.epoch
        self.backed = set()
        self.journaled = False
        self.sink.on_epoch_end(self.epoch, logs_of(self.epoch))
        train_epoch(self.tb, self.epoch)

    @precondition(lambda self: self._barrier_open() and len(self.backed) < len(RANKS))
    @rule(data=st.data())
    def back_up(self, data: st.DataObject) -> None:
        """A worker carries out the barrier's BackupModel and reports BackedUp."""
        rank = data.draw(st.sampled_from(sorted(set(RANKS) - self.backed)))
        decision = BackupModel(at=EffectPoint.epoch_end(self.epoch), epoch=self.epoch)
        applier = self.appliers[rank]
        # Captured now; persisted off the training thread, and reported once durable.
        assert applier.apply([decision], epoch=self.epoch, step=-1, max_step_begun=0) == []
        applier.drain()
        assert applier.take_late_reports() == [BackedUp(rank=rank, epoch=self.epoch)]
        self.backed.add(rank)
        self.recovery.backed_up(self.epoch, rank, None)
        asyncio.run(self.recovery.maybe_commit(self.epoch, set(RANKS)))
        self._maybe_complete()

    @precondition(lambda self: self._barrier_open() and not self.journaled)
    @rule()
    def journal(self) -> None:
        """The coordinator writes the barrier's entry (sinks synced first), then commits it
        if every rank has reported."""
        states = callback_states([self.sink, self.tb])
        entry = JournalEntry(epoch=self.epoch, callbacks=states)
        assert asyncio.run(self.recovery.write(entry))
        self.journaled = True
        asyncio.run(self.recovery.maybe_commit(self.epoch, set(RANKS)))
        self._maybe_complete()

    def _maybe_complete(self) -> None:
        if not self._barrier_open():
            assert self.recovery.committed_epoch == self.epoch
            self.complete = self.epoch

    # ------------------------------------------------------------------ crashes

    @rule()
    def crash(self) -> None:
        self._crash()

    @precondition(lambda self: self._barrier_open() and len(self.backed) < len(RANKS))
    @rule(data=st.data())
    def crash_in_a_backup(self, data: st.DataObject) -> None:
        """Killed while writing a backup: a temporary directory with part of it."""
        rank = data.draw(st.sampled_from(sorted(set(RANKS) - self.backed)))
        directory = os.path.join(self.run_dir, "backups", f"rank-{rank}")
        os.makedirs(directory, exist_ok=True)
        torn = tempfile.mkdtemp(prefix=".tmp-epoch-", dir=directory)
        with open(os.path.join(torn, "state.json"), "w") as handle:
            handle.write('{"rank": ')
        self._crash()

    @precondition(lambda self: self._barrier_open() and not self.journaled)
    @rule()
    def crash_in_a_journal_write(self) -> None:
        """Killed while writing the entry: a temporary file with part of it."""
        state = os.path.join(self.run_dir, "state")
        fd, _ = tempfile.mkstemp(prefix=".tmp-", dir=state)
        os.write(fd, b'{"format": 1, "epoch": ')
        os.close(fd)
        self._crash()

    # ------------------------------------------------------------------ the end

    @invariant()
    def committed_never_ahead_of_release(self) -> None:
        committed = self.recovery.committed_epoch
        assert committed is None or committed <= self.released

    @precondition(lambda self: not self._barrier_open() and self.epoch + 1 == EPOCHS)
    @rule()
    def finish(self) -> None:
        """The job ran to its end: the CSV is the uninterrupted run's."""
        self.sink.on_train_end()
        self.tb.on_train_end()
        with open(self.csv_path, "rb") as handle:
            assert handle.read() == EXPECTED[EPOCHS - 1]
        assert scalars(self.tb_dir) == EXPECTED_SCALARS[EPOCHS - 1]
        self._crash()  # and a resume after the end goes on from the last barrier


CommitProtocol.TestCase.settings = settings(
    max_examples=int(os.environ.get("COMMIT_MODEL_EXAMPLES", "30")),
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCommitProtocol = CommitProtocol.TestCase
