"""Shared base of callbacks that watch one metric: direction ("min"/"max") and improvement test."""

from __future__ import annotations

import difflib
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from distcb.callbacks.base import Callback, Logs
from distcb.protocol.logs import from_json_value, to_json_value
from distcb.protocol.metrics import direction_by_name

MODES = ("auto", "min", "max")


def check_mode(mode: Any, owner: str) -> str:
    """Validate a `mode` argument at construction.

    An unknown string falls back to "auto" with a warning, as in Keras 2 and 3
    (a mode that is not a string at all is a TypeError).
    """
    if not isinstance(mode, str):
        raise TypeError(f"{owner} mode must be one of {MODES}, received mode={mode!r}.")
    if mode not in MODES:
        warnings.warn(
            f"{owner} mode {mode!r} is unknown, fallback to auto mode. Pass one of {MODES}.",
            stacklevel=4,
        )
        return "auto"
    return mode


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


def reported_names(metrics: Iterable[str]) -> list[str]:
    """The log names a job whose compiled metrics are `metrics` reports: each, and its
    ``val_`` twin (when it validates)."""
    names = [str(m) for m in metrics]
    return list(dict.fromkeys([*names, *(f"val_{m}" for m in names if not m.startswith("val_"))]))


def not_reported(monitor: str, names: Iterable[str], owner: str) -> str:
    """Says that `monitor` is none of the reported `names`, lists them and suggests the
    closest (a typo such as 'val_los' is the usual cause)."""
    names = sorted(dict.fromkeys(str(n) for n in names))
    close = difflib.get_close_matches(monitor, names, n=1, cutoff=0.6)
    text = (
        f"{owner} monitors {monitor!r}, which is not a metric this job reports. Reported: "
        f"{', '.join(names) or 'none'}."
    )
    return text + (f" Did you mean monitor={close[0]!r}?" if close else "")


def resolve_direction(
    monitor: str,
    mode: str,
    directions: Mapping[str, Any] | None,
    owner: str,
    metrics: Iterable[str] = (),
) -> str:
    """The direction of `monitor`: `mode` itself, or for "auto" what the workers reported.

    Raises:
        ValueError: "auto" and neither the workers nor the name tell; when `monitor` is
            none of the names the job reports (`metrics` and the `directions`' keys, with
            their ``val_`` twins), the message says so and suggests the closest.
    """
    if mode != "auto":
        return mode
    directions = directions or {}
    for name in (monitor, monitor.removeprefix("val_")):
        if directions.get(name) in ("min", "max"):
            return str(directions[name])
    names = reported_names([*metrics, *directions])
    if names and monitor not in names:
        # A typo: a mode would only hide it (the callback would never see the metric).
        raise ValueError(not_reported(monitor, names, owner))
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


def _model_directions(model: Any) -> dict[str, str]:
    """The directions of a real Keras model's compiled metrics (plain ``fit``), else nothing."""
    if model is None or not hasattr(model, "metrics") or not hasattr(model, "layers"):
        return {}  # no model, or the coordinator's proxy: the workers sent directions
    from distcb.callbacks import local_model

    try:
        return local_model.metric_directions(model)
    except Exception:  # an unusual model: fall back to the name rule
        return {}


def _comparison(direction: str, model: Any) -> Callable[..., Any]:
    """Keras 3's ``ops.less``/``ops.greater`` for a Keras 3 model, else numpy's (tf_keras's)."""
    name = "less" if direction == "min" else "greater"
    keras = sys.modules.get("keras")
    if keras is not None and type(model).__module__.startswith("keras."):
        return getattr(keras.ops, name)
    return getattr(np, name)


class MonitorCallback(Callback):
    """Base of callbacks that watch a metric (EarlyStopping, ReduceLROnPlateau, ModelCheckpoint).

    Args:
        monitor: the metric name.
        mode: "auto", "min" or "max"; "auto" takes the direction the workers report
            for the metric (or for `x` when monitoring `val_x`), else the Keras name rule.
        min_delta: an improvement must beat the reference by more than ``abs(min_delta)``.

    The direction is resolved at ``on_train_begin`` (when params arrive), or at the
    first use when hooks are driven without it. In a plain ``fit`` the directions
    come from the model's compiled metrics, as in Keras 3.

    ``monitor_op`` is what Keras exposes for the direction: ``keras.ops.less`` or
    ``keras.ops.greater`` with a Keras 3 model, ``numpy.less`` or
    ``numpy.greater`` otherwise (tf_keras's); None until the direction is resolved.
    Assigning one of these (or any function named ``less``/``greater``/``lt``/``gt``)
    sets the direction.
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
            params = self.params or {}
            directions = params.get("directions") or _model_directions(self.model)
            self.direction = resolve_direction(
                self.monitor,
                self.mode,
                directions,
                type(self).__name__,
                metrics=params.get("metrics") or (),
            )
        return self.direction

    @property
    def monitor_op(self) -> Callable[..., Any] | None:
        if self.direction is None:
            return None
        return _comparison(self.direction, self.model)

    @monitor_op.setter
    def monitor_op(self, op: Callable[..., Any]) -> None:
        name = getattr(op, "__name__", None)
        if name in ("less", "lt"):
            self.direction = "min"
        elif name in ("greater", "gt"):
            self.direction = "max"
        else:
            raise TypeError(
                f"{type(self).__name__}.monitor_op must be a less or greater comparison (such "
                f"as numpy.less or keras.ops.greater), received {op!r}. Prefer mode='min' or "
                "mode='max'."
            )

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
            missing = not_reported(self.monitor, logs, type(self).__name__)
            warnings.warn(
                f"{what} is conditioned on metric `{self.monitor}` which is not available, "
                f"so this epoch is skipped. {missing}",
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
