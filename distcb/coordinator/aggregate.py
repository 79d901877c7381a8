"""Merge the logs of many workers into the one logs dict callbacks see.

Batch logs of Keras 3 and tf_keras are running means over the epoch so far;
the merge of step s is the sample-weighted mean over workers of those running
means, weights being the samples each worker has seen so far in the epoch
(equal weights when a worker does not know). Epoch logs are weighted by the
epoch's training samples, ``val_*`` keys by validation samples. Metrics named
in ``stateful_metrics`` and values that are not numbers are taken from the
chief (the lowest live rank). The per-worker spread of every numeric metric is
kept aside for status and TensorBoard; it never enters the logs.

Equal values look equal. Sums are exact (float32 value x integer weight is
exact in float64; `math.fsum`); float32 inputs give float32 means, as Keras
logs them, and ratios of counts (accuracies: hits / samples) give the ratio
of the summed counts, what one process over all samples logs; so means that
are mathematically equal compare equal, and no callback sees an
"improvement" that is only float rounding. A value from a single worker, and
values that are not float32 to begin with, pass through at full precision.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from distcb.protocol.errors import AggregationError
from distcb.protocol.logs import Logs

_FLOAT32 = struct.Struct("f")


def round32(value: float) -> float:
    """The float32 nearest to `value` (itself when beyond float32's range)."""
    try:
        result: float = _FLOAT32.unpack(_FLOAT32.pack(value))[0]
    except OverflowError:
        return value
    return result


@dataclass(frozen=True)
class Spread:
    """Where the workers disagree on one metric."""

    min: float
    max: float
    min_rank: int
    max_rank: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "min": self.min,
            "max": self.max,
            "min_rank": self.min_rank,
            "max_rank": self.max_rank,
        }


@dataclass(frozen=True)
class Merged:
    logs: Logs
    spread: dict[str, Spread]


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def weighted_mean(values: list[float], weights: list[float]) -> float:
    if len(values) == 1:
        return values[0]  # one worker: its value as it sent it
    # Non-finite values propagate on purpose: one worker's NaN makes the mean
    # NaN, so TerminateOnNaN sees it (a mean must never hide a diverged rank).
    if not all(math.isfinite(v) for v in values):
        return sum(values)  # NaN if any is NaN or both infinities occur, else that infinity
    total = math.fsum(weights)
    # float32 value x integer weight is exact in float64, and fsum adds exactly.
    mean = math.fsum(v * w for v, w in zip(values, weights, strict=True)) / total
    if not all(round32(v) == v for v in values):
        return mean  # not Keras's float32 logs: keep every bit
    # Each value is float32(k / w) with k an integer (an accuracy: hits / samples)?
    # Then return float32(sum k / sum w), what one process over all samples logs.
    counts = [round(v * w) for v, w in zip(values, weights, strict=True)]
    if all(
        w == 0 or (w.is_integer() and round32(k / w) == v)
        for k, v, w in zip(counts, values, weights, strict=True)
    ):
        return round32(math.fsum(counts) / total)
    return round32(mean)  # float32, as Keras logs: equal means compare equal


def _weights(ranks: list[int], counts: Mapping[int, float | None]) -> list[float]:
    raw = [counts.get(r) for r in ranks]
    if any(c is None for c in raw) or not math.fsum(c for c in raw if c is not None) > 0:
        return [1.0] * len(ranks)
    return [float(c) for c in raw if c is not None]


def merge_logs(
    per_rank: Mapping[int, Mapping[str, Any]],
    samples: Mapping[int, float | None],
    *,
    stateful_metrics: Collection[str] = (),
    val_samples: Mapping[int, float | None] | None = None,
) -> Merged:
    """Merge one step's (or one epoch's) logs from several ranks.

    Args:
        per_rank: rank -> that worker's logs.
        samples: rank -> samples behind its training metrics (None: unknown).
        stateful_metrics: names taken from the chief as they are.
        val_samples: rank -> samples behind its ``val_*`` metrics; defaults to `samples`.

    Raises:
        AggregationError: a worker lacks a key that another worker has.
    """
    if not per_rank:
        return Merged({}, {})
    ranks = sorted(per_rank)
    chief = ranks[0]
    keys: list[str] = list(per_rank[chief])
    for rank in ranks[1:]:
        if len(per_rank[rank]) != len(keys) or any(k not in per_rank[rank] for k in keys):
            keys.extend(k for k in per_rank[rank] if k not in keys)
    for key in keys:
        for rank in ranks:
            if key not in per_rank[rank]:
                holders = [r for r in ranks if key in per_rank[r]]
                raise AggregationError(
                    f"rank {rank}'s logs lack the key {key!r} that rank(s) {holders} report. "
                    "Every worker must compile the same metrics and use validation alike.",
                    rank=rank,
                    key=key,
                )
    train_weights = _weights(ranks, samples)
    val_weights = _weights(ranks, val_samples) if val_samples is not None else train_weights
    logs: Logs = {}
    spread: dict[str, Spread] = {}
    for key in keys:
        values = [per_rank[r][key] for r in ranks]
        if key in stateful_metrics or not all(is_number(v) for v in values):
            logs[key] = per_rank[chief][key]
            continue
        numbers = [float(v) for v in values]
        weights = val_weights if key.startswith("val_") else train_weights
        logs[key] = weighted_mean(numbers, weights)
        if len(ranks) > 1:
            lo = min(range(len(ranks)), key=lambda i: (numbers[i], ranks[i]))
            hi = max(range(len(ranks)), key=lambda i: (numbers[i], -ranks[i]))
            spread[key] = Spread(numbers[lo], numbers[hi], ranks[lo], ranks[hi])
    return Merged(logs, spread)
