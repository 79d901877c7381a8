"""Weight histograms: computed on the chief, written by TensorBoard.

The weights live on the workers, the TensorBoard writer on the coordinator. At
an epoch where histograms are due (a ``HistogramRequest``), the chief worker
calls :func:`weight_histograms` on its weights and sends the result in
``extras.histograms`` of its epoch-end message (``WeightHistogram``, in
``distcb.protocol.worker_data``, which bounds and checks it); the coordinator's
TensorBoard sink writes one ``<weight path>/histogram`` summary per weight, as
Keras does.

Statistics cover the finite values only; ``nonfinite`` counts the NaN and
infinite ones. A weight without a finite value has no buckets. Only numpy is
needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from distcb.protocol.worker_data import WeightHistogram

__all__ = ["WeightHistogram", "weight_histograms"]


def _one(name: str, values: Any, bins: int) -> WeightHistogram:
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = flat[np.isfinite(flat)]
    nonfinite = int(flat.size - finite.size)
    if finite.size == 0:
        return WeightHistogram(
            name=name, min=0.0, max=0.0, num=0, sum=0.0, sum_squares=0.0, nonfinite=nonfinite
        )
    counts, edges = np.histogram(finite, bins=bins)
    return WeightHistogram(
        name=name,
        min=float(finite.min()),
        max=float(finite.max()),
        num=int(finite.size),
        sum=float(finite.sum()),
        sum_squares=float(np.dot(finite, finite)),
        bucket_limits=tuple(float(x) for x in edges[1:]),
        bucket_counts=tuple(int(c) for c in counts),
        nonfinite=nonfinite,
    )


def weight_histograms(
    named_arrays: Mapping[str, Any], bins: int = 30
) -> tuple[WeightHistogram, ...]:
    """Summarize weights as histograms, for ``extras.histograms``.

    Args:
        named_arrays: weight path (``weight.path`` in Keras 3, ``weight.name`` in
            tf_keras) -> the weight's values (anything ``np.asarray`` takes).
        bins: buckets per histogram.

    Raises:
        ValueError: `bins` is not a positive integer.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, received {bins!r}.")
    return tuple(_one(str(name), values, bins) for name, values in named_arrays.items())
