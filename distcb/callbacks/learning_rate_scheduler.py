"""LearningRateScheduler: one schedule, applied by every worker before each epoch."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

from distcb.callbacks.base import Callback, Logs
from distcb.callbacks.io_utils import print_msg
from distcb.callbacks.learning_rates import log_name, optimizers_of
from distcb.callbacks.monitor import check_int


class LearningRateScheduler(Callback):
    """Set every worker's learning rate at the start of each epoch from `schedule`.

    Same contract as ``keras.callbacks.LearningRateScheduler``: ``schedule(epoch, lr)``
    (0-based epoch, current rate) returns the new rate as a float; a schedule that
    takes only the epoch is called as ``schedule(epoch)`` when the two-argument call
    raises TypeError. Epoch-end logs get ``learning_rate``.

    Args:
        schedule: a callable as above.
        verbose: 1 prints each new rate.

    Raises:
        TypeError: `schedule` is not callable.
        ValueError: `schedule` returned something other than a float.
    """

    decides_on_batch = False

    def __init__(self, schedule: Callable[..., Any], verbose: int = 0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                "LearningRateScheduler schedule must be a callable schedule(epoch, lr) -> float "
                f"or schedule(epoch) -> float, received {schedule!r}."
            )
        self.schedule = schedule
        self.verbose = check_int(verbose, "verbose", "LearningRateScheduler")
        self.learning_rates: list[dict[str, Any]] = []  # {"epoch": e, "learning_rate": lr}

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        for name, optimizer in optimizers_of(self.model):
            learning_rate = self._update(optimizer, epoch)
            record = {"epoch": epoch, "learning_rate": learning_rate}
            self.learning_rates.append(record if name is None else {**record, "optimizer": name})
            if self.verbose > 0:
                which = "" if name is None else f"{name} "
                print_msg(
                    f"\nEpoch {epoch + 1}: LearningRateScheduler setting {which}learning rate "
                    f"to {learning_rate}."
                )

    def _update(self, optimizer: Any, epoch: int) -> float:
        if not hasattr(optimizer, "learning_rate"):
            raise ValueError(
                f"LearningRateScheduler needs an optimizer with a learning_rate attribute, "
                f"received {optimizer!r}."
            )
        try:
            learning_rate = self.schedule(epoch, float(optimizer.learning_rate))
        except TypeError:  # a schedule(epoch) of the old API
            learning_rate = self.schedule(epoch)
        if isinstance(learning_rate, bool | numbers.Integral) or not isinstance(
            learning_rate, numbers.Real
        ):
            raise ValueError(
                "The output of the LearningRateScheduler schedule function should be a float. "
                f"Received {learning_rate!r} of type {type(learning_rate).__name__} at epoch "
                f"{epoch}; return e.g. float(value)."
            )
        optimizer.learning_rate = float(learning_rate)
        return float(learning_rate)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if logs is not None:
            for name, optimizer in optimizers_of(self.model):
                logs[log_name(name)] = float(optimizer.learning_rate)

    def get_state(self) -> dict[str, Any]:
        """The rates set so far, JSON-compatible."""
        return {"learning_rates": [dict(r) for r in self.learning_rates]}

    def set_state(self, state: dict[str, Any]) -> None:
        self.learning_rates = [dict(r) for r in state.get("learning_rates", [])]
