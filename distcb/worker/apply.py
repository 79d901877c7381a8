"""Carrying out decisions on a worker: one dispatch for every kind of worker.

A `DecisionTarget` is what a decision acts on: a Keras model
(`distcb.keras`), or the fake model of a scripted worker (`distcb.testing`).
`DecisionApplier` keeps what applying needs across calls (the weight
snapshots) and a record of what was applied where, and turns a save into the
`Saved` report the chief sends back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from distcb.protocol.decisions import (
    Decision,
    ReleaseWeights,
    RestoreWeights,
    SaveModel,
    SetLearningRate,
    SnapshotWeights,
    StopTraining,
)
from distcb.protocol.errors import DecisionError
from distcb.protocol.messages import Saved


class DecisionTarget(Protocol):
    """What decisions act on: the model of one worker."""

    def stop_training(self) -> None:
        """Make `fit` stop after the current step."""

    def set_learning_rate(self, value: float) -> None: ...

    def get_weights(self) -> Any:
        """A copy of the current weights (kept as a snapshot)."""

    def set_weights(self, weights: Any) -> None: ...

    def save(self, filepath: str, *, weights_only: bool, overwrite: bool) -> None:
        """Save the model (or its weights) to `filepath` atomically; raise on failure."""


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
    """

    def __init__(self, target: DecisionTarget, rank: int):
        self.target = target
        self.rank = rank
        self.snapshots: dict[int, Any] = {}
        self.applied: list[AppliedDecision] = []
        self.saved_paths: list[str] = []
        self.stopped = False

    def apply(
        self, decisions: Sequence[Decision], *, epoch: int, step: int, max_step_begun: int
    ) -> list[Saved]:
        """Carry out `decisions`; returns the save reports to send to the coordinator.

        Raises:
            DecisionError: a restore names a snapshot this worker does not hold.
        """
        reports: list[Saved] = []
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
        self.snapshots[decision.snapshot_id] = self.target.get_weights()

    def _restore(self, decision: RestoreWeights) -> None:
        if decision.snapshot_id not in self.snapshots:
            raise DecisionError(
                f"rank {self.rank}: no weights snapshot {decision.snapshot_id} to restore"
            )
        self.target.set_weights(self.snapshots[decision.snapshot_id])

    def _release(self, decision: ReleaseWeights) -> None:
        self.snapshots.pop(decision.snapshot_id, None)

    def _save(self, decision: SaveModel) -> Saved | None:
        if self.rank != 0:
            return None  # single writer: the chief alone holds the model files
        try:
            self.target.save(
                decision.filepath, weights_only=decision.weights_only, overwrite=decision.overwrite
            )
        except Exception as exc:  # reported to the coordinator; training goes on, as in Keras
            return Saved(rank=self.rank, filepath=decision.filepath, error=_describe(exc))
        self.saved_paths.append(decision.filepath)
        return Saved(rank=self.rank, filepath=decision.filepath)

    _HANDLERS: dict[type[Decision], Callable[[DecisionApplier, Any], Saved | None]] = {
        StopTraining: _stop,
        SetLearningRate: _set_lr,
        SnapshotWeights: _snapshot,
        RestoreWeights: _restore,
        ReleaseWeights: _release,
        SaveModel: _save,
    }


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:4096]
