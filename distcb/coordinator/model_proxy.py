"""What coordinator callbacks see as ``self.model``: a stand-in whose effects become decisions.

The model lives on the workers. A callback on the coordinator sets
``self.model.stop_training``, reads or assigns
``self.model.optimizer.learning_rate``, calls ``get_weights()`` /
``set_weights()`` or ``save()`` exactly as it would in Keras; the proxy records
each effect as a decision value that every worker applies at one named point.
"""

from __future__ import annotations

import collections
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from distcb.protocol.decisions import (
    Decision,
    EffectPoint,
    ReleaseWeights,
    RestoreWeights,
    SaveModel,
    SetLearningRate,
    SnapshotWeights,
    StopTraining,
    batch_effect_step,
)


class HookContext(NamedTuple):
    """Which hook the coordinator is running, so that decisions get the right effect point.

    A named tuple: one is made per merged step, and a tuple is made in half the time of
    a frozen dataclass."""

    phase: str  # "train_begin" | "epoch_begin" | "batch" | "epoch_end" | "train_end"
    epoch: int = 0
    step: int = -1

    def effect_point(self, window_steps: int | None) -> EffectPoint:
        if self.phase in ("train_begin", "epoch_begin"):
            return EffectPoint.epoch_begin(self.epoch)
        if self.phase == "batch":
            if window_steps is None:
                # Workers were told no batch decisions would come, so none waits
                # on batch progress: the earliest common point is the epoch end.
                return EffectPoint.epoch_end(self.epoch)
            return EffectPoint.batch(self.epoch, batch_effect_step(self.step, window_steps))
        if self.phase == "epoch_end":
            return EffectPoint.epoch_end(self.epoch)
        return EffectPoint.train_end()


@dataclass(frozen=True)
class DecisionRecord:
    """A decision as the coordinator made it: which callback, and when (wall clock)."""

    decision: Decision
    made_by: str
    time: float

    def to_json(self) -> dict[str, Any]:
        return {**self.decision.to_json(), "made_by": self.made_by, "time": self.time}


class DecisionRecorder:
    """Collects the decisions callbacks make through the proxy during one hook chain.

    `current_callback` returns the callback the chain is running (the callback list
    tracks it): each decision is attributed to it.
    """

    def __init__(self, window_steps: int | None = None):
        self.window_steps = window_steps
        self.context = HookContext("train_begin")
        self.current_callback: Callable[[], Any] = lambda: None
        self._decisions: list[Decision] = []
        self._made_by: list[str] = []
        self._released: collections.deque[int] = collections.deque()  # filled by GC finalizers
        self.snapshot_counter = 0  # the last snapshot id given out
        self.outstanding: set[int] = set()  # snapshots given out and not released

    def set_context(self, phase: str, epoch: int = 0, step: int = -1) -> None:
        self.context = HookContext(phase, epoch, step)

    def effect_point(self) -> EffectPoint:
        return self.context.effect_point(self.window_steps)

    def record(self, decision: Decision, made_by: str | None = None) -> None:
        self._decisions.append(decision)
        callback = self.current_callback()
        self._made_by.append(made_by or (type(callback).__name__ if callback else "distcb"))

    def discard(self, kind: type[Decision]) -> None:
        kept = [
            (d, m)
            for d, m in zip(self._decisions, self._made_by, strict=True)
            if not isinstance(d, kind)
        ]
        self._decisions = [d for d, _ in kept]
        self._made_by = [m for _, m in kept]

    def new_snapshot_id(self) -> int:
        self.snapshot_counter += 1
        self.outstanding.add(self.snapshot_counter)
        return self.snapshot_counter

    def release_later(self, snapshot_id: int) -> None:
        self._released.append(snapshot_id)

    def requeue(self, records: list[DecisionRecord]) -> None:
        """Decisions made where none can go out (an observer's hook): with the next ones."""
        for record in records:
            self.record(record.decision, record.made_by)

    def take(self) -> list[DecisionRecord]:
        """The decisions made since the last call, releases of dropped snapshots last."""
        if not self._decisions and not self._released:
            return []  # the usual answer, once per merged step: keep it cheap
        at = self.effect_point()
        while self._released:
            snapshot_id = self._released.popleft()
            self.outstanding.discard(snapshot_id)
            self.record(ReleaseWeights(at=at, snapshot_id=snapshot_id), "distcb")
        now = time.time()
        out = [
            DecisionRecord(d, m, now) for d, m in zip(self._decisions, self._made_by, strict=True)
        ]
        self._decisions, self._made_by = [], []
        return out


class WeightsSnapshot:
    """What ``model.get_weights()`` returns on the coordinator: a handle to weights kept by
    every worker at the moment the call takes effect. Pass it to ``model.set_weights`` to
    restore them. The arrays themselves stay on the workers."""

    def __init__(self, snapshot_id: int, at: EffectPoint | None, recorder: DecisionRecorder):
        self.snapshot_id = snapshot_id
        self.at = at  # None: a handle rebuilt from the journal
        weakref.finalize(self, recorder.release_later, snapshot_id)

    def __repr__(self) -> str:
        where = "an earlier run" if self.at is None else self.at
        return f"WeightsSnapshot(id={self.snapshot_id}, taken at {where})"

    def _no_arrays(self, *args: Any) -> Any:
        raise TypeError(
            "On the distcb coordinator, model.get_weights() returns a WeightsSnapshot handle: "
            "the arrays live on the workers. Keep the handle and pass it to "
            "model.set_weights() to restore those weights on every worker."
        )

    __len__ = __iter__ = __getitem__ = __array__ = _no_arrays


class LearningRate:
    """The workers' learning rate as the coordinator knows it.

    Behaves like a Keras variable for what callbacks do with it: ``float()``,
    ``numpy()``, ``assign()``, numpy conversion and arithmetic.
    """

    dtype = "float32"

    def __init__(self, optimizer: OptimizerProxy):
        self._optimizer = optimizer

    def numpy(self) -> float:
        return self._optimizer._value

    def __float__(self) -> float:
        return self._optimizer._value

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        import numpy as np

        return np.asarray(self._optimizer._value, dtype=dtype or "float32")

    def assign(self, value: Any) -> None:
        self._optimizer.learning_rate = value

    def __repr__(self) -> str:
        return f"<distcb learning_rate={self._optimizer._value!r}>"

    def _binary(op: str) -> Any:  # type: ignore[misc]
        def method(self: LearningRate, other: Any) -> Any:
            return getattr(float(self), op)(float(other))

        return method

    __mul__ = _binary("__mul__")
    __rmul__ = _binary("__rmul__")
    __truediv__ = _binary("__truediv__")
    __rtruediv__ = _binary("__rtruediv__")
    __add__ = _binary("__add__")
    __radd__ = _binary("__radd__")
    __sub__ = _binary("__sub__")
    __rsub__ = _binary("__rsub__")
    __lt__ = _binary("__lt__")
    __le__ = _binary("__le__")
    __gt__ = _binary("__gt__")
    __ge__ = _binary("__ge__")
    __eq__ = _binary("__eq__")
    __hash__ = None  # type: ignore[assignment]


class OptimizerProxy:
    """``model.optimizer`` on the coordinator: only the learning rate is shared."""

    def __init__(self, recorder: DecisionRecorder, learning_rate: float | None):
        self._recorder = recorder
        self._value = float(learning_rate) if learning_rate is not None else math.nan
        self.name = "distcb_optimizer"

    @property
    def learning_rate(self) -> LearningRate:
        return LearningRate(self)

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        new = float(value)
        if not math.isfinite(new) or new < 0:
            raise ValueError(f"learning_rate must be a finite number >= 0, received {value!r}")
        self._value = new
        self._recorder.discard(SetLearningRate)  # the last assignment of a hook chain wins
        self._recorder.record(SetLearningRate(at=self._recorder.effect_point(), learning_rate=new))

    # Keras 2 spelling.
    lr = learning_rate

    def _sync(self, value: float | None) -> None:
        """Follow a learning rate the workers report (no decision; None: unknown)."""
        self._value = math.nan if value is None else float(value)


class ModelProxy:
    """``self.model`` for callbacks on the coordinator."""

    def __init__(
        self,
        recorder: DecisionRecorder,
        *,
        learning_rate: float | None = None,
        name: str = "model",
    ):
        self._recorder = recorder
        self._stop_training = False
        self.optimizer = OptimizerProxy(recorder, learning_rate)
        self.name = name
        self.history: Any = None

    @property
    def stop_training(self) -> bool:
        return self._stop_training

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        value = bool(value)
        if value and not self._stop_training:
            self._recorder.record(StopTraining(at=self._recorder.effect_point()))
        elif not value and self._stop_training:
            # Taking a stop back is possible only before it was sent.
            self._recorder.discard(StopTraining)
        self._stop_training = value

    def get_weights(self) -> WeightsSnapshot:
        """Every worker keeps its weights as they are when this takes effect."""
        at = self._recorder.effect_point()
        snapshot_id = self._recorder.new_snapshot_id()
        self._recorder.record(SnapshotWeights(at=at, snapshot_id=snapshot_id))
        return WeightsSnapshot(snapshot_id, at, self._recorder)

    def weights_snapshot(self, snapshot_id: int) -> WeightsSnapshot:
        """The handle of snapshot `snapshot_id`, rebuilt when a job resumes (`set_state`)."""
        if snapshot_id not in self._recorder.outstanding:
            raise ValueError(f"there is no weights snapshot {snapshot_id} to hold")
        return WeightsSnapshot(snapshot_id, None, self._recorder)

    def set_weights(self, weights: Any) -> None:
        """Every worker restores the weights of a snapshot from `get_weights()`."""
        if not isinstance(weights, WeightsSnapshot):
            raise TypeError(
                "On the distcb coordinator, model.set_weights() takes the WeightsSnapshot that "
                f"model.get_weights() returned; received {type(weights).__name__}. Arrays cannot "
                "be pushed to the workers from a callback."
            )
        self._recorder.record(
            RestoreWeights(at=self._recorder.effect_point(), snapshot_id=weights.snapshot_id)
        )

    def save(self, filepath: Any, overwrite: bool = True, **kwargs: Any) -> None:
        """The chief worker saves the whole model to `filepath`, atomically."""
        self._save(filepath, overwrite, weights_only=False)

    def save_weights(self, filepath: Any, overwrite: bool = True, **kwargs: Any) -> None:
        """The chief worker saves the weights to `filepath`, atomically."""
        self._save(filepath, overwrite, weights_only=True)

    def _save(self, filepath: Any, overwrite: bool, *, weights_only: bool) -> None:
        import os

        path = os.fspath(filepath)
        if not isinstance(path, str):
            raise TypeError(f"filepath must be a str or os.PathLike, received {filepath!r}")
        self._recorder.record(
            SaveModel(
                at=self._recorder.effect_point(),
                filepath=os.path.abspath(path),
                weights_only=weights_only,
                overwrite=bool(overwrite),
            )
        )

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"The distcb coordinator's model proxy has no attribute {name!r}: the model lives on "
            "the workers. Callbacks on the coordinator can use stop_training, "
            "optimizer.learning_rate, get_weights/set_weights and save/save_weights."
        )
