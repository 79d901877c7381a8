"""Log values: what a Keras logs dict may carry over the wire, and their JSON view.

On the wire (MessagePack) logs travel as they are: floats (NaN and infinities
included), strings, booleans, None, and lists of those (a per-class metric), nested at
most three deep.
Workers unwrap numpy scalars, arrays and framework tensors with `clean_logs`
before a message is encoded.

Where JSON is the format (``/status``, the journal, Tune's checkpoint
description, callback states), non-finite floats become the strings
``"NaN"``, ``"Infinity"`` and ``"-Infinity"``: `to_json_value` and
`from_json_value` are the one place that table lives.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, cast

from distcb.protocol.errors import ProtocolError

_Scalar = int | float | bool | str | None
LogValue = float | bool | str | None | list[_Scalar | list[_Scalar | list[_Scalar]]]
"""A value of a logs dict on the wire: a scalar, or lists of scalars nested at most three
deep (a per-class metric, a matrix); never a map. The decoder rejects anything else at the
first value that does not fit, before it allocates the rest."""
Logs = dict[str, Any]

_NON_FINITE_OUT = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_NON_FINITE_IN = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def clean_value(value: Any) -> LogValue:
    """One log value as a plain Python value (numpy and tensors unwrapped)."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    if callable(getattr(value, "numpy", None)):  # a framework tensor (tf_keras hands these over)
        return clean_value(value.numpy())
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return clean_value(value.tolist())
    if isinstance(value, list | tuple):
        # Nested deeper than LogValue allows, it is refused by the coordinator's decoder.
        return cast(LogValue, [clean_value(v) for v in value])
    if hasattr(value, "__float__"):
        return float(value)
    raise ProtocolError(
        f"log values must be numbers, strings or lists of numbers; received {type(value).__name__}"
    )


def clean_logs(logs: Mapping[str, Any] | None) -> Logs:
    """Logs with every value a plain Python value, ready to encode."""
    if not logs:
        return {}
    return {str(k): clean_value(v) for k, v in logs.items()}


def to_json_value(value: Any) -> Any:
    """`value` (nested dicts and lists too) with non-finite floats as strings: strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else _NON_FINITE_OUT[repr(value)]
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    return value


def from_json_value(value: Any) -> Any:
    """The inverse of `to_json_value`: the non-finite strings become floats again."""
    if isinstance(value, str):
        return _NON_FINITE_IN.get(value, value)
    if isinstance(value, dict):
        return {k: from_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json_value(v) for v in value]
    return value
