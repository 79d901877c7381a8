"""ReduceLROnPlateau: one learning-rate schedule for every worker, from the aggregated metric."""

from __future__ import annotations

import math
import struct
import warnings
from typing import Any

from distcb.callbacks.base import Logs
from distcb.callbacks.io_utils import print_msg
from distcb.callbacks.learning_rates import log_name, optimizers_of
from distcb.callbacks.monitor import (
    MonitorCallback,
    check_int,
    check_number,
    decode_float,
    encode_float,
)


def _float32(value: float) -> float:
    """`value` rounded to float32, as a Keras optimizer variable holds it."""
    try:
        return float(struct.unpack("f", struct.pack("f", value))[0])
    except OverflowError:
        return math.copysign(math.inf, value)


class ReduceLROnPlateau(MonitorCallback):
    """Reduce every worker's learning rate when `monitor`, aggregated, stops improving.

    Same arguments and semantics as ``keras.callbacks.ReduceLROnPlateau``: each
    epoch end writes ``logs["learning_rate"]`` (the rate in effect during the
    epoch); in cooldown the counter decreases and ``wait`` is reset; an
    improvement (by more than `min_delta`) resets ``wait``; otherwise, outside
    cooldown, ``wait`` grows and at `patience` the rate becomes
    ``max(lr * factor, min_lr)`` (if ``lr > min_lr``) and cooldown starts.

    Args:
        monitor: the metric to watch.
        factor: the new rate is ``lr * factor``; must be < 1.
        patience: epochs without improvement before reducing.
        verbose: 1 prints each reduction.
        mode: "auto", "min" or "max".
        min_delta: an improvement must be larger than ``abs(min_delta)``.
        cooldown: epochs to wait after a reduction before counting again.
        min_lr: the lowest rate.
        epsilon: Keras 2's name for `min_delta` (deprecated, honoured with a warning).

    Raises:
        ValueError: ``factor >= 1`` or another out-of-range argument.
        TypeError: an unknown keyword argument.
    """

    decides_on_batch = False

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
        **kwargs: Any,
    ):
        if "epsilon" in kwargs:
            min_delta = kwargs.pop("epsilon")
            warnings.warn(
                "ReduceLROnPlateau: `epsilon` is the Keras 2 name of `min_delta`; it is used as "
                f"min_delta={min_delta!r}. Pass min_delta instead.",
                DeprecationWarning,
                stacklevel=2,
            )
        if kwargs:
            raise TypeError(
                f"ReduceLROnPlateau got unexpected keyword arguments {sorted(kwargs)}; it accepts "
                "monitor, factor, patience, verbose, mode, min_delta, cooldown, min_lr "
                "(and Keras 2's epsilon)."
            )
        super().__init__(monitor, mode, min_delta)
        owner = "ReduceLROnPlateau"
        self.factor = check_number(factor, "factor", owner, minimum=0.0)
        if self.factor >= 1.0:
            raise ValueError(
                "ReduceLROnPlateau does not support a factor >= 1.0 (it would not reduce the "
                f"learning rate). Received factor={factor!r}; pass a factor in [0, 1)."
            )
        self.patience = check_int(patience, "patience", owner)
        self.verbose = check_int(verbose, "verbose", owner)
        self.cooldown = check_int(cooldown, "cooldown", owner)
        self.min_lr = check_number(min_lr, "min_lr", owner, minimum=0.0)
        self.cooldown_counter = 0
        self.wait = 0
        self.reductions: list[dict[str, Any]] = []  # {"epoch": e, "learning_rate": lr}
        self._resumed = False

    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self.resolve_direction()
        if self._learning_rate_unknown():
            warnings.warn(
                "ReduceLROnPlateau: the workers did not report their learning rate, so it "
                "cannot be reduced. Make sure the chief sends params['learning_rate'].",
                stacklevel=2,
            )
        if self._resumed:
            self._resumed = False
            return
        self.best = None
        self.cooldown_counter = 0
        self.wait = 0

    def _learning_rate_unknown(self) -> bool:
        """On the coordinator: whether the workers did not report their learning rate (NaN)."""
        try:
            return any(math.isnan(float(o.learning_rate)) for _, o in optimizers_of(self.model))
        except (AttributeError, TypeError, ValueError):  # e.g. a MultiOptimizer not built yet
            return False

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        self.resolve_direction()
        logs = logs if logs is not None else {}
        for name, optimizer in optimizers_of(self.model):
            logs[log_name(name)] = float(optimizer.learning_rate)
        current = self._monitor_value(logs, "Learning rate reduction")
        if current is None:
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if self._is_improvement(current, self.best):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience and self._reduce(epoch):
                self.cooldown_counter = self.cooldown
                self.wait = 0

    def _reduce(self, epoch: int) -> bool:
        reduced = False
        for name, optimizer in optimizers_of(self.model):
            old = float(optimizer.learning_rate)
            # Compare as the float32 Keras variable would, so a rate already at min_lr stays.
            if not _float32(old) > _float32(self.min_lr):
                continue
            new = max(old * self.factor, self.min_lr)
            optimizer.learning_rate = new
            record = {"epoch": epoch, "learning_rate": new}
            self.reductions.append(record if name is None else {**record, "optimizer": name})
            if self.verbose > 0:
                which = "" if name is None else f" {name}"
                print_msg(
                    f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing{which} learning rate to "
                    f"{new}."
                )
            reduced = True
        return reduced

    def get_state(self) -> dict[str, Any]:
        """The counters and the reductions made so far, JSON-compatible."""
        return {
            "best": encode_float(self.best),
            "wait": self.wait,
            "cooldown_counter": self.cooldown_counter,
            "reductions": [dict(r) for r in self.reductions],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Resume from `get_state()`; the next `on_train_begin` keeps these values."""
        self.best = decode_float(state["best"])
        self.wait = int(state["wait"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.reductions = [dict(r) for r in state.get("reductions", [])]
        self._resumed = True
