"""Merge the logs of many workers into the one logs dict callbacks see.

Batch logs of Keras 3 and tf_keras are running means over the epoch so far;
the merge of step s is the sample-weighted mean over workers of those running
means, weights being the samples each worker has seen so far in the epoch
(equal weights when a worker does not know). Epoch logs are weighted by the
epoch's training samples, ``val_*`` keys by validation samples. Sums are
exact (float32 value x integer weight is exact in float64; math.fsum); float32
inputs give float32 means, as Keras logs them, and ratios of counts
(accuracies: hits / samples) give the ratio of the summed counts, so means that
are mathematically equal compare equal. Metrics named in ``stateful_metrics``
and values that are not numbers are taken from the chief (the lowest live rank).
The per-worker spread of every numeric metric is kept aside for status and
TensorBoard; it never enters the logs.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from distcb.core.errors import AggregationError
from distcb.core.messages import BatchEntry, Logs


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


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _weighted_mean(values: list[float], weights: list[float]) -> float:
    # Non-finite values propagate on purpose: one worker's NaN makes the mean
    # NaN, so TerminateOnNaN sees it (a mean must never hide a diverged rank).
    if not all(math.isfinite(v) for v in values):
        return sum(values)  # NaN if any is NaN or both infinities occur, else that infinity
    total = math.fsum(weights)
    # float32 value x integer weight is exact in float64, and fsum adds exactly.
    mean = math.fsum(v * w for v, w in zip(values, weights, strict=True)) / total
    if not all(_float32(v) == v for v in values):
        return mean  # not Keras's float32 logs: keep every bit
    # Each value is float32(k / w) with k an integer (an accuracy: hits / samples)?
    # Then return float32(sum k / sum w), what one process over all samples logs.
    counts = [round(v * w) for v, w in zip(values, weights, strict=True)]
    if all(
        w == 0 or (w.is_integer() and _float32(k / w) == v)
        for k, v, w in zip(counts, values, weights, strict=True)
    ):
        return _float32(math.fsum(counts) / total)
    return _float32(mean)  # float32, as Keras logs: equal means compare equal


def _float32(value: float) -> float:
    """The float32 nearest to `value` (itself when out of float32's range)."""
    try:
        return float(struct.unpack("f", struct.pack("f", value))[0])
    except OverflowError:
        return value


def _weights(ranks: list[int], counts: Mapping[int, float | None]) -> list[float]:
    raw = [counts.get(r) for r in ranks]
    if any(c is None for c in raw) or not math.fsum(c for c in raw if c is not None) > 0:
        return [1.0] * len(ranks)
    return [float(c) for c in raw if c is not None]


def merge_logs(
    per_rank: Mapping[int, Logs],
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
    keys: list[str] = []
    for rank in ranks:
        keys.extend(k for k in per_rank[rank] if k not in keys)
    for key in keys:
        for rank in ranks:
            if key not in per_rank[rank]:
                holders = [r for r in ranks if key in per_rank[r]]
                raise AggregationError(
                    f"[Rank {rank}] logs lack the key {key!r} that rank(s) {holders} report. "
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
        if key in stateful_metrics or not all(_is_number(v) for v in values):
            logs[key] = per_rank[chief][key]
            continue
        numbers = [float(v) for v in values]
        weights = val_weights if key.startswith("val_") else train_weights
        logs[key] = _weighted_mean(numbers, weights)
        lo = min(range(len(ranks)), key=lambda i: (numbers[i], ranks[i]))
        hi = max(range(len(ranks)), key=lambda i: (numbers[i], -ranks[i]))
        spread[key] = Spread(numbers[lo], numbers[hi], ranks[lo], ranks[hi])
    return Merged(logs, spread)


@dataclass(frozen=True)
class MergedStep:
    step: int
    logs: Logs
    spread: dict[str, Spread]
    ranks: tuple[int, ...]


class BatchMerger:
    """Collects batch entries of one epoch and releases each step once every live rank sent it."""

    def __init__(self, epoch: int, *, stateful_metrics: Collection[str] = ()):
        self.epoch = epoch
        self._stateful = frozenset(stateful_metrics)
        self._pending: dict[int, dict[int, BatchEntry]] = {}
        self._last_step_of: dict[int, int] = {}
        self.processed_step = -1

    def add(self, rank: int, entries: Iterable[BatchEntry]) -> None:
        last = self._last_step_of.get(rank, self.processed_step)
        for entry in entries:
            if entry.step <= last:
                raise AggregationError(
                    f"[Rank {rank}] sent step {entry.step} of epoch {self.epoch} after step "
                    f"{last}: batch logs must arrive in step order, once.",
                    rank=rank,
                )
            last = entry.step
            self._pending.setdefault(entry.step, {})[rank] = entry
        self._last_step_of[rank] = last

    def pop_ready(self, live_ranks: Collection[int]) -> list[MergedStep]:
        """Steps every live rank has reported, in order (earlier partial steps flushed too)."""
        if not live_ranks:
            return []
        complete = [s for s, by in self._pending.items() if all(r in by for r in live_ranks)]
        if not complete:
            return []
        return self._release(max(complete), live_ranks)

    def flush(self, live_ranks: Collection[int]) -> list[MergedStep]:
        """Every step still pending, merged over the ranks that reported it (epoch end)."""
        if not self._pending:
            return []
        return self._release(max(self._pending), live_ranks)

    def _release(self, upto: int, live_ranks: Collection[int]) -> list[MergedStep]:
        out = []
        for step in sorted(s for s in self._pending if s <= upto):
            by_rank = {r: e for r, e in self._pending.pop(step).items() if r in live_ranks}
            if not by_rank:
                continue
            merged = merge_logs(
                {r: e.logs for r, e in by_rank.items()},
                {r: e.samples for r, e in by_rank.items()},
                stateful_metrics=self._stateful,
            )
            out.append(MergedStep(step, merged.logs, merged.spread, tuple(sorted(by_rank))))
            self.processed_step = step
        return out

    @property
    def pending_steps(self) -> int:
        return len(self._pending)
