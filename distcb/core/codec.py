"""Strict-JSON values for the wire: logs (numbers, lists, non-finite floats) and field checks.

Non-finite floats travel as the strings ``"NaN"``, ``"Infinity"`` and
``"-Infinity"`` so that every frame is strict JSON; numpy scalars and arrays
are unwrapped to Python numbers and lists.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from distcb.core.errors import ProtocolError

Logs = dict[str, Any]

_NON_FINITE_OUT = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_NON_FINITE_IN = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _encode_value(value: Any) -> Any:
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else _NON_FINITE_OUT[repr(number)]
    if callable(getattr(value, "numpy", None)):  # a framework tensor (tf_keras hands these over)
        return _encode_value(value.numpy())
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _encode_value(value.tolist())
    if isinstance(value, list | tuple):
        return [_encode_value(v) for v in value]
    if hasattr(value, "__float__"):
        return _encode_value(float(value))
    raise ProtocolError(
        f"log values must be numbers, strings or lists of numbers; received {type(value).__name__}"
    )


def _decode_value(value: Any, where: str) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return _NON_FINITE_IN.get(value, value)
    if isinstance(value, list):
        return [_decode_value(v, where) for v in value]
    raise ProtocolError(f"{where}: unsupported log value of type {type(value).__name__}")


def encode_logs(logs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Logs as strict-JSON values (numpy scalars unwrapped, non-finite floats as strings)."""
    if not logs:
        return {}
    return {str(k): _encode_value(v) for k, v in logs.items()}


def decode_logs(data: Any, where: str = "logs") -> Logs:
    if not isinstance(data, dict):
        raise ProtocolError(f"{where} must be an object, received {type(data).__name__}")
    return {str(k): _decode_value(v, f"{where}[{k!r}]") for k, v in data.items()}


def require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise ProtocolError(f"{where}: missing field {key!r}")
    value = data[key]
    if isinstance(value, bool) and kind is not bool:
        raise ProtocolError(f"{where}: field {key!r} must not be a boolean, received {value!r}")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ProtocolError(f"{where}: field {key!r} must be {names}, received {value!r}")
    return value


def nonneg_int(data: Mapping[str, Any], key: str, where: str) -> int:
    value = require(data, key, int, where)
    if value < 0:
        raise ProtocolError(f"{where}: field {key!r} must be >= 0, received {value}")
    return int(value)


def optional_count(data: Mapping[str, Any], key: str, where: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ProtocolError(f"{where}: field {key!r} must be a count >= 0, received {value!r}")
    return float(value)
