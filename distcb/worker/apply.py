"""Carrying out decisions on a worker: one dispatch for every kind of worker.

A `DecisionTarget` is what a decision acts on: a Keras model
(`distcb.keras`), or the fake model of a scripted worker (`distcb.testing`).
`DecisionApplier` keeps what applying needs across calls (the weight
snapshots, the backup store) and a record of what was applied where, and
turns a save or a backup into the report the worker sends back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from distcb.protocol.decisions import (
    BackupModel,
    Decision,
    ReleaseWeights,
    RestoreWeights,
    SaveModel,
    SetLearningRate,
    SnapshotWeights,
    StopTraining,
)
from distcb.protocol.errors import DecisionError
from distcb.protocol.messages import BackedUp, Message, Resume, Saved
from distcb.worker.backup import BackupStore
from distcb.worker.backup_writer import BackupWriter
from distcb.worker.outputs import Digest, SavedOutputs

logger = logging.getLogger("distcb.worker")


class DecisionTarget(Protocol):
    """What decisions act on: the model of one worker."""

    def stop_training(self) -> None:
        """Make `fit` stop after the current step."""

    def set_learning_rate(self, value: float) -> None: ...

    def get_weights(self) -> Any:
        """A copy of the current weights (kept as a snapshot)."""

    def set_weights(self, weights: Any) -> None: ...

    def save(
        self,
        filepath: str,
        *,
        weights_only: bool,
        overwrite: bool,
        before_replace: Callable[[str], None] | None = None,
    ) -> None:
        """Save the model (or its weights) to `filepath` atomically; raise on failure.

        `before_replace(path)`, when given, is called with the complete temporary file
        just before it takes `filepath`'s name (the chief logs its checksum there: see
        `distcb.worker.outputs`); a target that writes no file never calls it."""

    snapshot_suffix: str
    """The file suffix of a persisted weight snapshot."""

    def capture_state(self) -> CapturedState:
        """Model and optimizer state (everything training goes on from) as of now, to be
        written by the backup writer (`distcb.worker.backup_writer`)."""

    def load_state(self, directory: str) -> None:
        """Set model and optimizer state back to what a `capture_state` wrote in `directory`."""

    def save_snapshot(self, weights: Any, path: str) -> None:
        """Persist weights that `get_weights` returned to the file `path`."""

    def load_snapshot(self, path: str) -> Any:
        """Weights as `get_weights` returns them, from a file `save_snapshot` wrote."""


class CapturedState(Protocol):
    """A target's state as `capture_state` took it."""

    @property
    def detached(self) -> bool:
        """Whether it stays as captured while training goes on (then it is written while
        training goes on; otherwise training waits until it is written)."""

    def write(self, directory: str) -> dict[str, dict[str, Any]]:
        """Write it into `directory`, which exists and is empty; returns the size and
        SHA-256 (``{"bytes", "sha256"}``) of the files it hashed while writing, by their
        path relative to `directory` (the others are hashed after)."""


@dataclass(frozen=True)
class LiveState:
    """The state of a target that is written from the live model (`save(directory)`):
    training waits until it is written."""

    save: Callable[[str], None]
    detached: ClassVar[bool] = False

    def write(self, directory: str) -> dict[str, dict[str, Any]]:
        self.save(directory)
        return {}


@dataclass(frozen=True)
class AppliedDecision:
    """A decision as one worker applied it, and where it was in training at that moment."""

    decision: Decision
    epoch: int
    step: int  # the step about to begin (batch decisions), -1 between epochs
    max_step_begun: int  # the highest step of `epoch` the worker had begun

    def to_json(self) -> list[Any]:
        return [self.epoch, self.step, self.decision.to_json()]


class DecisionApplier:
    """Applies decisions to a target, in order, recording each.

    Args:
        target: the model decisions act on.
        rank: this worker's rank; only the chief (rank 0) saves.
        store: where backups and persisted snapshots go (None: a job without a run
            directory, which cannot back up).
    """

    def __init__(
        self,
        target: DecisionTarget,
        rank: int,
        store: BackupStore | None = None,
        report: Callable[[Message], None] | None = None,
    ):
        self.target = target
        self.rank = rank
        self.store = store
        # Where the backup writer's reports go (`BackedUp` once a backup is durable); the
        # session's send. Without one they are kept in `late_reports`.
        self.report = report
        self.late_reports: list[Message] = []
        self.writer = BackupWriter(f"distcb-backup-{rank}")
        self._unpersisted: set[int] = set()  # snapshots whose persist failed
        # The coordinator journals: snapshots go to disk too, and the chief records the
        # checksums of the files it saves (checked on resume).
        self.persist_snapshots = False
        self.outputs = SavedOutputs(store.directory) if store is not None and rank == 0 else None
        self.snapshots: dict[int, Any] = {}
        self.on_disk: set[int] = set()  # snapshots a resumed job holds only on disk
        self.applied: list[AppliedDecision] = []
        self.saved_paths: list[str] = []
        self.backups: list[int] = []  # the epochs this worker backed up
        self.stopped = False

    def resume(self, resume: Resume) -> None:
        """Set the target back to its backup of `resume.epoch` (a resumed job)."""
        if self.store is None:
            raise DecisionError(
                f"rank {self.rank}: the job resumes from its backups, but this worker has no "
                "run directory to read them from (set DISTCB_RUN_DIR)"
            )
        self.target.load_state(self.store.read_epoch(resume.epoch))
        if self.outputs is not None:
            self.outputs.resume(resume.epoch, self.store.recorded_outputs)
        self.snapshots.clear()
        self.on_disk = set(resume.snapshots)

    def apply(
        self, decisions: Sequence[Decision], *, epoch: int, step: int, max_step_begun: int
    ) -> list[Message]:
        """Carry out `decisions`; returns the reports to send to the coordinator.

        Raises:
            DecisionError: a restore names a snapshot this worker does not hold.
        """
        reports: list[Message] = []
        for decision in decisions:
            self.applied.append(AppliedDecision(decision, epoch, step, max_step_begun))
            report = self._HANDLERS[type(decision)](self, decision)
            if report is not None:
                reports.append(report)
        return reports

    def _stop(self, decision: StopTraining) -> None:
        self.stopped = True
        self.target.stop_training()

    def _set_lr(self, decision: SetLearningRate) -> None:
        self.target.set_learning_rate(decision.learning_rate)

    def _snapshot(self, decision: SnapshotWeights) -> None:
        weights = self.target.get_weights()  # a copy: the weights as of this decision
        snapshot_id = decision.snapshot_id
        self.snapshots[snapshot_id] = weights
        store = self.store
        if self.persist_snapshots and store is not None and store.writes:
            suffix = self.target.snapshot_suffix

            def persist() -> None:  # on the writer, before any backup that names it
                try:
                    store.write_snapshot(
                        snapshot_id, suffix, lambda path: self.target.save_snapshot(weights, path)
                    )
                except Exception as exc:
                    self._unpersisted.add(snapshot_id)
                    logger.error(
                        "rank %d: weight snapshot %d not persisted: %s",
                        self.rank,
                        snapshot_id,
                        _describe(exc),
                    )

            self.writer.submit(persist)

    def _restore(self, decision: RestoreWeights) -> None:
        snapshot_id = decision.snapshot_id
        if snapshot_id not in self.snapshots and snapshot_id in self.on_disk:
            assert self.store is not None
            path = self.store.read_snapshot(snapshot_id, self.target.snapshot_suffix)
            self.snapshots[snapshot_id] = self.target.load_snapshot(path)
        if snapshot_id not in self.snapshots:
            raise DecisionError(f"rank {self.rank}: no weights snapshot {snapshot_id} to restore")
        self.target.set_weights(self.snapshots[snapshot_id])

    def _release(self, decision: ReleaseWeights) -> None:
        self.snapshots.pop(decision.snapshot_id, None)
        self.on_disk.discard(decision.snapshot_id)

    def _backup(self, decision: BackupModel) -> BackedUp | None:
        """Capture the state now; the writer persists it and reports `BackedUp` once it is
        durable (None here), or at once when there is nothing to write."""
        store = self.store
        if store is None:
            return self._backed_up(
                decision.epoch, DecisionError("this worker has no run directory to back up into")
            )
        if not store.writes:  # the chief holds the one model and writes it
            return self._backed_up(decision.epoch, None)
        self.writer.wait_for_backup()  # at most one backup in flight, and one capture
        try:
            captured = self.target.capture_state()
        except Exception as exc:  # reported: the epoch is then no rollback point
            return self._backed_up(decision.epoch, exc)
        saved = self.outputs
        outputs = None if saved is None else saved.backing_up(decision.epoch)

        def persist() -> None:
            error: Exception | None = None
            try:
                lost = self._unpersisted & set(decision.keep_snapshots)
                if lost:
                    raise DecisionError(
                        f"the weight snapshots {sorted(lost)} this barrier holds could not be "
                        "persisted"
                    )
                store.write_epoch(
                    decision.epoch,
                    captured.write,
                    snapshots=decision.keep_snapshots,
                    outputs=outputs,
                )
                store.keep_only_snapshots(decision.keep_snapshots)
                self._unpersisted &= set(decision.keep_snapshots)
                if saved is not None:
                    kept = store.kept_epochs()
                    saved.backed_up(kept[0] if kept else decision.epoch)
            except Exception as exc:
                error = exc
            self._send_late(self._backed_up(decision.epoch, error))

        if captured.detached:
            self.writer.submit(persist, backup=True)
        else:
            self.writer.run_now(persist, backup=True)
        return None

    def _backed_up(self, epoch: int, error: Exception | None) -> BackedUp:
        if error is not None:
            return BackedUp(rank=self.rank, epoch=epoch, error=_describe(error))
        self.backups.append(epoch)
        return BackedUp(rank=self.rank, epoch=epoch)

    def _send_late(self, message: Message) -> None:
        if self.report is not None:
            self.report(message)
        else:
            self.late_reports.append(message)

    def take_late_reports(self) -> list[Message]:
        """The writer's reports kept for want of a `report` function (and forget them)."""
        reports, self.late_reports = self.late_reports, []
        return reports

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every backup and snapshot taken so far is persisted and reported
        (before the train end is sent: its last barrier can commit). False on timeout."""
        return self.writer.drain(timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        """Let what is being persisted finish (up to `timeout_s`), then end the writer."""
        self.writer.close(timeout_s)

    def _save(self, decision: SaveModel) -> Saved | None:
        if self.rank != 0:
            return None  # single writer: the chief alone holds the model files
        outputs = self.outputs if self.persist_snapshots else None
        logged: list[Digest] = []

        def log_save(finished: str) -> None:
            assert outputs is not None
            logged.append(outputs.before_replace(decision.filepath, finished))

        try:
            self.target.save(
                decision.filepath,
                weights_only=decision.weights_only,
                overwrite=decision.overwrite,
                before_replace=None if outputs is None else log_save,
            )
        except Exception as exc:  # reported to the coordinator; training goes on, as in Keras
            return Saved(rank=self.rank, filepath=decision.filepath, error=_describe(exc))
        if outputs is not None and logged:
            outputs.saved(decision.filepath, logged[-1])
        self.saved_paths.append(decision.filepath)
        return Saved(rank=self.rank, filepath=decision.filepath)

    _HANDLERS: dict[type[Decision], Callable[[DecisionApplier, Any], Message | None]] = {
        StopTraining: _stop,
        SetLearningRate: _set_lr,
        SnapshotWeights: _snapshot,
        RestoreWeights: _restore,
        ReleaseWeights: _release,
        SaveModel: _save,
        BackupModel: _backup,
    }


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:4096]
