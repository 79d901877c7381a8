"""Weight histograms as a small JSON payload: computed on the chief, written by TensorBoard.

The weights live on the workers, the TensorBoard writer on the coordinator. At
an epoch where histograms are due, the chief worker calls
:func:`weight_histograms` on its weights and puts the result in
``extras["histograms"]`` of its epoch-end message; the coordinator's
TensorBoard sink decodes it with :func:`decode_weight_histograms` and writes one
``<weight path>/histogram`` summary per weight, as Keras does.

Payload (strict JSON: every float is finite)::

    {"version": 1,
     "weights": {"<weight path>": {"min": float, "max": float, "num": int,
                                   "sum": float, "sum_squares": float,
                                   "bucket_limits": [float, ...],
                                   "bucket_counts": [int, ...],
                                   "nonfinite": int}}}

``bucket_limits`` are the right edges of the buckets (TensorBoard's
``HistogramProto`` convention). Statistics cover the finite values only;
``nonfinite`` counts the NaN and infinite ones. A weight without a finite value
has no buckets. Only numpy is needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

PAYLOAD_VERSION = 1


@dataclass(frozen=True)
class WeightHistogram:
    """One decoded weight histogram, in the fields of TensorBoard's ``HistogramProto``."""

    name: str
    min: float
    max: float
    num: int
    sum: float
    sum_squares: float
    bucket_limits: tuple[float, ...]
    bucket_counts: tuple[int, ...]
    nonfinite: int = 0

    @property
    def tag(self) -> str:
        """The TensorBoard tag Keras uses for this weight: ``<path>/histogram``."""
        return f"{self.name.replace(':', '_')}/histogram"


def _one(values: np.ndarray, bins: int) -> dict[str, Any]:
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = flat[np.isfinite(flat)]
    nonfinite = int(flat.size - finite.size)
    if finite.size == 0:
        return {
            "min": 0.0,
            "max": 0.0,
            "num": 0,
            "sum": 0.0,
            "sum_squares": 0.0,
            "bucket_limits": [],
            "bucket_counts": [],
            "nonfinite": nonfinite,
        }
    counts, edges = np.histogram(finite, bins=bins)
    return {
        "min": float(finite.min()),
        "max": float(finite.max()),
        "num": int(finite.size),
        "sum": float(finite.sum()),
        "sum_squares": float(np.dot(finite, finite)),
        "bucket_limits": [float(x) for x in edges[1:]],
        "bucket_counts": [int(c) for c in counts],
        "nonfinite": nonfinite,
    }


def weight_histograms(named_arrays: Mapping[str, Any], bins: int = 30) -> dict[str, Any]:
    """Summarize weights as histograms, JSON-compatible, for ``extras["histograms"]``.

    Args:
        named_arrays: weight path (``weight.path`` in Keras 3, ``weight.name`` in
            tf_keras) -> the weight's values (anything ``np.asarray`` takes).
        bins: buckets per histogram.

    Returns:
        The payload described in the module docstring.

    Raises:
        ValueError: `bins` is not a positive integer.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, received {bins!r}.")
    return {
        "version": PAYLOAD_VERSION,
        "weights": {str(name): _one(values, bins) for name, values in named_arrays.items()},
    }


def _number(entry: Mapping[str, Any], key: str, where: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: {key!r} must be a finite number, received {value!r}.")
    return float(value)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{where}: counts must be numbers >= 0, received {value!r}.")
    if value != int(value):
        raise ValueError(f"{where}: counts must be whole numbers, received {value!r}.")
    return int(value)


def decode_weight_histograms(payload: Any) -> list[WeightHistogram]:
    """Validate a payload from :func:`weight_histograms` (it crossed the network).

    Raises:
        ValueError: the payload is malformed or of another version; the message says where.
    """
    if not isinstance(payload, Mapping):
        raise ValueError(
            f"histograms payload must be an object, received {type(payload).__name__}."
        )
    if payload.get("version") != PAYLOAD_VERSION:
        raise ValueError(
            f"histograms payload version {payload.get('version')!r} is not supported; "
            f"expected {PAYLOAD_VERSION}."
        )
    weights = payload.get("weights")
    if not isinstance(weights, Mapping):
        raise ValueError("histograms payload lacks the object 'weights'.")
    out = []
    for name, entry in weights.items():
        where = f"histograms[{name!r}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be an object, received {type(entry).__name__}.")
        limits = entry.get("bucket_limits")
        counts = entry.get("bucket_counts")
        if not isinstance(limits, list) or not isinstance(counts, list):
            raise ValueError(f"{where}: bucket_limits and bucket_counts must be lists.")
        if len(limits) != len(counts):
            raise ValueError(
                f"{where}: {len(limits)} bucket_limits but {len(counts)} bucket_counts; "
                "they must be as many."
            )
        out.append(
            WeightHistogram(
                name=str(name),
                min=_number(entry, "min", where),
                max=_number(entry, "max", where),
                num=_count(entry.get("num"), where),
                sum=_number(entry, "sum", where),
                sum_squares=_number(entry, "sum_squares", where),
                bucket_limits=tuple(_number({"x": x}, "x", where) for x in limits),
                bucket_counts=tuple(_count(c, where) for c in counts),
                nonfinite=_count(entry.get("nonfinite", 0), where),
            )
        )
    return out
