"""Shared base of callbacks that watch one metric: direction ("min"/"max") and improvement test."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from distcb.callbacks.base import Callback, Logs
from distcb.protocol.logs import from_json_value, to_json_value
from distcb.protocol.metrics import direction_by_name

MODES = ("auto", "min", "max")


def check_mode(mode: Any, owner: str) -> str:
    """Validate a `mode` argument at construction."""
    if mode not in MODES:
        raise ValueError(f"{owner} mode must be one of {MODES}, received mode={mode!r}.")
    return str(mode)


def check_monitor(monitor: Any, owner: str) -> str:
    if not isinstance(monitor, str) or not monitor:
        raise TypeError(
            f"{owner} monitor must be a metric name such as 'val_loss', received {monitor!r}."
        )
    return monitor


def check_number(value: Any, name: str, owner: str, *, minimum: float | None = None) -> float:
    """A real number (not a bool), optionally >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(value)  # numpy scalars
        except (TypeError, ValueError):
            raise TypeError(f"{owner} {name} must be a number, received {value!r}.") from None
    if minimum is not None and not value >= minimum:
        raise ValueError(f"{owner} {name} must be >= {minimum}, received {value!r}.")
    return float(value)


def check_int(value: Any, name: str, owner: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TypeError(f"{owner} {name} must be an int, received {value!r}.")
    if value < minimum:
        raise ValueError(f"{owner} {name} must be >= {minimum}, received {value!r}.")
    return int(value)


def resolve_direction(
    monitor: str, mode: str, directions: Mapping[str, Any] | None, owner: str
) -> str:
    """The direction of `monitor`: `mode` itself, or for "auto" what the workers reported.

    Raises:
        ValueError: "auto" and neither the workers nor the name tell.
    """
    if mode != "auto":
        return mode
    directions = directions or {}
    for name in (monitor, monitor.removeprefix("val_")):
        if directions.get(name) in ("min", "max"):
            return str(directions[name])
    by_name = direction_by_name(monitor)
    if by_name is not None:
        return by_name
    known = ", ".join(f"{k}: {v}" for k, v in sorted(directions.items())) or "none"
    raise ValueError(
        f"{owner} received monitor={monitor!r} with mode='auto', but cannot tell whether it "
        f"should be minimized or maximized: the workers reported no direction for it (known "
        f"directions: {known}) and its name is not one Keras recognises. Pass mode='min' "
        "to monitor the lowest value or mode='max' to monitor the highest."
    )


def encode_float(value: float | None) -> float | str | None:
    """A float as JSON allows it (for `get_state`): non-finite values become strings."""
    encoded: float | str | None = to_json_value(value)
    return encoded


def decode_float(value: Any) -> float | None:
    return None if value is None else float(from_json_value(value))


class MonitorCallback(Callback):
    """Base of callbacks that watch a metric (EarlyStopping, ReduceLROnPlateau, ModelCheckpoint).

    Args:
        monitor: the metric name.
        mode: "auto", "min" or "max"; "auto" takes the direction the workers report
            for the metric (or for `x` when monitoring `val_x`), else the Keras name rule.
        min_delta: an improvement must beat the reference by more than ``abs(min_delta)``.

    The direction is resolved at ``on_train_begin`` (when params arrive), or at the
    first use when hooks are driven without it.
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "auto", min_delta: float = 0.0):
        super().__init__()
        owner = type(self).__name__
        self.monitor = check_monitor(monitor, owner)
        self.mode = check_mode(mode, owner)
        self.min_delta = abs(check_number(min_delta, "min_delta", owner))
        self.direction: str | None = None
        self.best: float | None = None

    def resolve_direction(self) -> str:
        if self.direction is None:
            self.direction = resolve_direction(
                self.monitor, self.mode, self.params.get("directions"), type(self).__name__
            )
        return self.direction

    def _is_improvement(self, current: float, reference: float | None) -> bool:
        """Strictly better than `reference` by more than ``min_delta`` (None: always)."""
        if reference is None:
            return True
        if self.resolve_direction() == "min":
            return current + self.min_delta < reference
        return current - self.min_delta > reference

    def _monitor_value(self, logs: Logs | None, what: str) -> float | None:
        """The monitored value as a float, or None with a warning when it is missing."""
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            warnings.warn(
                f"{what} is conditioned on metric `{self.monitor}` which is not available. "
                f"Available metrics are: {','.join(logs)}.",
                stacklevel=3,
            )
            return None
        try:
            return float(value)
        except (TypeError, ValueError):
            warnings.warn(
                f"{what} needs `{self.monitor}` to be a scalar, received {value!r}; skipping.",
                stacklevel=3,
            )
            return None
