"""Decisions are values: what the coordinator tells every worker to do, and when.

Each decision names the point at which it takes effect (`EffectPoint`):

* ``epoch_begin`` of epoch e: applied before the first batch of epoch e
  (an LR schedule, a stop decided in ``on_train_begin``).
* ``epoch_end`` of epoch e: applied at the epoch-end barrier of epoch e,
  before epoch e + 1 begins (EarlyStopping, ModelCheckpoint).
* ``batch`` (e, s): applied from ``on_train_batch_begin(s)`` of epoch e, so
  a stop lands after step s on every worker. The window rule picks s.
  A worker whose epoch ends before step s applies it at that epoch's end.
* ``train_end``: applied in ``on_train_end`` (restore best weights).

The window rule (DESIGN.md) is stated here once, as `last_allowed_step` (how far
a worker may run: the worker's `may_begin`, the coordinator's bound on the batch
logs it accepts) and `batch_effect_step` (where a batch decision takes effect); the
coordinator and every worker use these functions and write the sums nowhere else.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

import msgspec

Phase = Literal["epoch_begin", "batch", "epoch_end", "train_end"]
PHASES: tuple[Phase, ...] = ("epoch_begin", "batch", "epoch_end", "train_end")
_TRAIN_END_EPOCH = 2**62

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]


def last_allowed_step(processed_step: int, window_steps: int) -> int:
    """The window rule: the last step a worker may begin (and report) while the newest
    processed step it knows of is `processed_step`: P + W."""
    return processed_step + window_steps


def may_begin(step: int, processed_known: int, window_steps: int | None) -> bool:
    """Whether a worker that knows `processed_known` is processed may begin `step`
    (always, when the coordinator bounds nothing: it wants no batch logs)."""
    return window_steps is None or step <= last_allowed_step(processed_known, window_steps)


def batch_effect_step(processed_step: int, window_steps: int) -> int:
    """The step at which a decision made while processing `processed_step` takes effect.

    No worker can have begun P + W + 1: beginning it needs to know that P + 1 was
    processed, and the decision is sent before the progress message that says so.
    """
    return last_allowed_step(processed_step, window_steps) + 1


class EffectPoint(msgspec.Struct, frozen=True, order=True, array_like=True):
    """When a decision takes effect. Orders by training time; on the wire ``[epoch, order, step]``.

    `order` is the position within the epoch: 0 begin, 1 batch, 2 end, 3 train end.
    """

    epoch: NonNegInt
    order: Annotated[int, msgspec.Meta(ge=0, le=3)]
    step: Annotated[int, msgspec.Meta(ge=-1)] = -1

    def __post_init__(self) -> None:
        if (self.order == 1) != (self.step >= 0):
            raise ValueError("an effect point has a step if and only if it is a batch point")

    @classmethod
    def epoch_begin(cls, epoch: int) -> EffectPoint:
        return cls(epoch, 0)

    @classmethod
    def batch(cls, epoch: int, step: int) -> EffectPoint:
        return cls(epoch, 1, step)

    @classmethod
    def epoch_end(cls, epoch: int) -> EffectPoint:
        return cls(epoch, 2)

    @classmethod
    def train_end(cls) -> EffectPoint:
        return cls(_TRAIN_END_EPOCH, 3)

    @property
    def phase(self) -> Phase:
        return PHASES[self.order]

    def to_json(self) -> dict[str, object]:
        """A readable form for reports and ``/status``."""
        out: dict[str, object] = {"phase": self.phase}
        if self.phase != "train_end":
            out["epoch"] = self.epoch
        if self.phase == "batch":
            out["step"] = self.step
        return out

    def __str__(self) -> str:
        if self.phase == "batch":
            return f"epoch {self.epoch} step {self.step}"
        if self.phase == "train_end":
            return "train end"
        return f"{self.phase.replace('_', ' ')} {self.epoch}"


class Decision(msgspec.Struct, frozen=True, tag_field="kind", forbid_unknown_fields=True):
    """Base of all decisions: `at` says when every worker applies it."""

    kind: ClassVar[str]
    at: EffectPoint

    def to_json(self) -> dict[str, object]:
        """A readable form for reports and ``/status``."""
        body = {f: getattr(self, f) for f in self.__struct_fields__ if f != "at"}
        return {"kind": self.kind, "at": self.at.to_json(), **body}


class StopTraining(Decision, frozen=True, tag="stop"):
    """Stop after the effect point (`model.stop_training = True`)."""

    kind: ClassVar[str] = "stop"


class SetLearningRate(Decision, frozen=True, tag="set_lr"):
    """Assign the optimizer's learning rate."""

    kind: ClassVar[str] = "set_lr"
    learning_rate: Annotated[float, msgspec.Meta(ge=0)]

    def __post_init__(self) -> None:
        if not math.isfinite(self.learning_rate):
            raise ValueError(f"learning_rate must be finite, received {self.learning_rate!r}")


class SnapshotWeights(Decision, frozen=True, tag="snapshot"):
    """Every worker keeps a copy of its current weights under `snapshot_id`."""

    kind: ClassVar[str] = "snapshot"
    snapshot_id: NonNegInt


class RestoreWeights(Decision, frozen=True, tag="restore"):
    """Every worker sets its weights back to snapshot `snapshot_id`."""

    kind: ClassVar[str] = "restore"
    snapshot_id: NonNegInt


class ReleaseWeights(Decision, frozen=True, tag="release"):
    """Every worker drops snapshot `snapshot_id` (no callback holds it any more)."""

    kind: ClassVar[str] = "release"
    snapshot_id: NonNegInt


class SaveModel(Decision, frozen=True, tag="save"):
    """The chief alone saves the model (or its weights) to `filepath`, atomically."""

    kind: ClassVar[str] = "save"
    filepath: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
    weights_only: bool = False
    overwrite: bool = True


class BackupModel(Decision, frozen=True, tag="backup"):
    """Every worker that holds its own weights backs up model and optimizer as they stand
    at the end of `epoch` (the journal's rollback point) and reports `BackedUp`; weight
    snapshot files not in `keep_snapshots` may go."""

    kind: ClassVar[str] = "backup"
    epoch: NonNegInt
    keep_snapshots: tuple[NonNegInt, ...] = ()


AnyDecision = (
    StopTraining
    | SetLearningRate
    | SnapshotWeights
    | RestoreWeights
    | ReleaseWeights
    | SaveModel
    | BackupModel
)
DECISION_TYPES: tuple[type[Decision], ...] = (
    StopTraining,
    SetLearningRate,
    SnapshotWeights,
    RestoreWeights,
    ReleaseWeights,
    SaveModel,
    BackupModel,
)


class PendingDecisions:
    """A worker's decisions not yet applied, released at their effect points.

    Not thread-safe: the worker protocol that owns it serialises access.
    """

    def __init__(self) -> None:
        self._pending: list[Decision] = []

    def add(self, decisions: list[Decision] | tuple[Decision, ...]) -> None:
        self._pending.extend(decisions)

    def __len__(self) -> int:
        return len(self._pending)

    def take_until(self, point: EffectPoint) -> list[Decision]:
        """Decisions due at or before `point` (train-end decisions wait for the train end)."""
        ready = [d for d in self._pending if d.at.order != 3 and d.at <= point]
        if ready:
            self._pending = [d for d in self._pending if not (d.at.order != 3 and d.at <= point)]
        return ready

    def take_all(self) -> list[Decision]:
        ready, self._pending = self._pending, []
        return ready
