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
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from distcb.core.errors import ProtocolError

Phase = Literal["epoch_begin", "batch", "epoch_end", "train_end"]
PHASES: tuple[Phase, ...] = ("epoch_begin", "batch", "epoch_end", "train_end")


def batch_effect_step(processed_step: int, window_steps: int) -> int:
    """The step at which a decision made while processing `processed_step` takes effect.

    A worker may begin step s only once it knows that step s - W - 1 was
    processed; a decision is sent before the progress message for the step
    it was made at, so no worker can have begun P + W + 1 yet.
    """
    return processed_step + window_steps + 1


def may_begin(step: int, processed_known: int, window_steps: int) -> bool:
    """Whether a worker that knows `processed_known` is processed may begin `step`."""
    return step <= processed_known + window_steps


@dataclass(frozen=True, order=True)
class EffectPoint:
    """When a decision takes effect. Orders by training time."""

    epoch: int
    order: int  # position within the epoch: 0 begin, 1 batch, 2 end; train end sorts last
    step: int
    phase: Phase

    @classmethod
    def epoch_begin(cls, epoch: int) -> EffectPoint:
        return cls(epoch, 0, -1, "epoch_begin")

    @classmethod
    def batch(cls, epoch: int, step: int) -> EffectPoint:
        return cls(epoch, 1, step, "batch")

    @classmethod
    def epoch_end(cls, epoch: int) -> EffectPoint:
        return cls(epoch, 2, -1, "epoch_end")

    @classmethod
    def train_end(cls) -> EffectPoint:
        return cls(2**62, 3, -1, "train_end")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.phase}
        if self.phase != "train_end":
            out["epoch"] = self.epoch
        if self.phase == "batch":
            out["step"] = self.step
        return out

    @classmethod
    def from_dict(cls, data: Any) -> EffectPoint:
        if not isinstance(data, dict):
            raise ProtocolError(f"decision 'at' must be an object, received {data!r}")
        phase = data.get("phase")
        if phase == "train_end":
            return cls.train_end()
        epoch = _int(data, "epoch")
        if phase == "epoch_begin":
            return cls.epoch_begin(epoch)
        if phase == "epoch_end":
            return cls.epoch_end(epoch)
        if phase == "batch":
            return cls.batch(epoch, _int(data, "step"))
        raise ProtocolError(f"decision phase must be one of {PHASES}, received {phase!r}")

    def __str__(self) -> str:
        if self.phase == "batch":
            return f"epoch {self.epoch} step {self.step}"
        if self.phase == "train_end":
            return "train end"
        return f"{self.phase.replace('_', ' ')} {self.epoch}"


@dataclass(frozen=True)
class Decision:
    """Base of all decisions: `at` says when every worker applies it."""

    kind: ClassVar[str] = ""
    at: EffectPoint

    def to_dict(self) -> dict[str, Any]:
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "at"}
        return {"kind": self.kind, "at": self.at.to_dict(), **body}


@dataclass(frozen=True)
class StopTraining(Decision):
    """Stop after the effect point (`model.stop_training = True`)."""

    kind: ClassVar[str] = "stop"


@dataclass(frozen=True)
class SetLearningRate(Decision):
    """Assign the optimizer's learning rate."""

    kind: ClassVar[str] = "set_lr"
    learning_rate: float = 0.0


@dataclass(frozen=True)
class SnapshotWeights(Decision):
    """Every worker keeps a copy of its current weights under `snapshot_id`."""

    kind: ClassVar[str] = "snapshot"
    snapshot_id: int = 0


@dataclass(frozen=True)
class RestoreWeights(Decision):
    """Every worker sets its weights back to snapshot `snapshot_id`."""

    kind: ClassVar[str] = "restore"
    snapshot_id: int = 0


@dataclass(frozen=True)
class ReleaseWeights(Decision):
    """Every worker drops snapshot `snapshot_id` (no callback holds it any more)."""

    kind: ClassVar[str] = "release"
    snapshot_id: int = 0


@dataclass(frozen=True)
class SaveModel(Decision):
    """The chief alone saves the model (or its weights) to `filepath`, atomically."""

    kind: ClassVar[str] = "save"
    filepath: str = ""
    weights_only: bool = False
    overwrite: bool = True


DECISION_TYPES: dict[str, type[Decision]] = {
    cls.kind: cls
    for cls in (
        StopTraining,
        SetLearningRate,
        SnapshotWeights,
        RestoreWeights,
        ReleaseWeights,
        SaveModel,
    )
}


def decision_from_dict(data: Any) -> Decision:
    """Decode and validate one decision."""
    if not isinstance(data, dict):
        raise ProtocolError(f"a decision must be an object, received {type(data).__name__}")
    kind = data.get("kind")
    cls = DECISION_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(
            f"unknown decision kind {kind!r}; expected one of {sorted(DECISION_TYPES)}"
        )
    at = EffectPoint.from_dict(data.get("at"))
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name == "at":
            continue
        if field.name not in data:
            raise ProtocolError(f"decision {kind!r} lacks field {field.name!r}")
        value = data[field.name]
        expected = {"learning_rate": float, "snapshot_id": int, "filepath": str}.get(field.name)
        if field.name in ("weights_only", "overwrite"):
            expected = bool
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is not None and (
            not isinstance(value, expected) or (expected is int and isinstance(value, bool))
        ):
            raise ProtocolError(
                f"decision {kind!r} field {field.name!r} must be {expected.__name__}, "
                f"received {value!r}"
            )
        if expected is float and not math.isfinite(value):
            raise ProtocolError(f"decision {kind!r}: {field.name} must be finite, got {value!r}")
        kwargs[field.name] = value
    return cls(at=at, **kwargs)


class PendingDecisions:
    """A worker's queue of decisions not yet applied, released at their effect points.

    Shared by every kind of worker (Keras glue, scripted workers) so that they
    all apply decisions by the same rule.
    """

    def __init__(self) -> None:
        self._pending: list[Decision] = []

    def add(self, decisions: list[Decision]) -> None:
        self._pending.extend(decisions)

    def __len__(self) -> int:
        return len(self._pending)

    def _take(self, due: Any) -> list[Decision]:
        ready = [d for d in self._pending if due(d.at)]
        if ready:
            self._pending = [d for d in self._pending if not due(d.at)]
        return ready

    def take_epoch_begin(self, epoch: int) -> list[Decision]:
        """Decisions to apply before the first batch of `epoch`."""
        return self._take(
            lambda at: at.phase != "train_end" and at <= EffectPoint.epoch_begin(epoch)
        )

    def take_batch_begin(self, epoch: int, step: int) -> list[Decision]:
        """Decisions to apply from `on_train_batch_begin(step)`."""
        return self._take(
            lambda at: at.phase != "train_end" and at <= EffectPoint.batch(epoch, step)
        )

    def take_epoch_end(self, epoch: int) -> list[Decision]:
        """Decisions to apply at the end of `epoch`, batch decisions past its last step included."""
        return self._take(lambda at: at.phase != "train_end" and at <= EffectPoint.epoch_end(epoch))

    def take_train_end(self) -> list[Decision]:
        """Everything left: applied in `on_train_end`."""
        ready, self._pending = self._pending, []
        return ready


def _int(data: dict[str, Any], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"{key!r} must be a non-negative integer, received {value!r}")
    return value
