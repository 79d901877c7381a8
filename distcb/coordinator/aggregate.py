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

import collections
import math
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from distcb.protocol.errors import AggregationError
from distcb.protocol.logs import Logs
from distcb.protocol.messages import BatchFrame

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


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _weighted_mean(values: list[float], weights: list[float]) -> float:
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
        if len(ranks) > 1:
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


class _RankQueue:
    """One rank's batch entries not merged yet: its frames, and a cursor into the first."""

    __slots__ = ("frames", "offset", "pending", "last_step")

    def __init__(self) -> None:
        self.frames: collections.deque[BatchFrame] = collections.deque()
        self.offset = 0
        self.pending = 0
        self.last_step = -1

    def head_step(self) -> int | None:
        return self.frames[0].steps[self.offset] if self.frames else None

    def pop(self) -> tuple[dict[str, Any], float | None]:
        frame = self.frames[0]
        i = self.offset
        logs = {key: column[i] for key, column in frame.logs.items()}
        samples = frame.samples[i] if frame.samples is not None else None
        self.offset += 1
        self.pending -= 1
        if self.offset == len(frame.steps):
            self.frames.popleft()
            self.offset = 0
        return logs, samples


class BatchMerger:
    """Collects the batch entries of one epoch and releases each step once every rank still
    training has reported it or a later step (a step a rank skipped is merged without it).

    Memory is what the ranks sent beyond the last released step: the roster bounds
    it per rank (the window rule, `Config.max_ahead_steps`).
    """

    def __init__(self, epoch: int, *, stateful_metrics: Collection[str] = ()):
        self.epoch = epoch
        self._stateful = frozenset(stateful_metrics)
        self._queues: dict[int, _RankQueue] = {}
        self.processed_step = -1

    def add(self, rank: int, frame: BatchFrame) -> None:
        """Queue a rank's frame (its steps ascend past what it sent before: the roster checks)."""
        if not frame.steps:
            return
        queue = self._queues.get(rank)
        if queue is None:
            queue = self._queues[rank] = _RankQueue()
        queue.frames.append(frame)
        queue.pending += len(frame.steps)
        queue.last_step = frame.steps[-1]

    def pop_ready(self, live_ranks: Collection[int]) -> list[MergedStep]:
        """Steps every rank in `live_ranks` has reported (or passed), merged, in order."""
        if not live_ranks:
            return []
        upto = min((self._queues[r].last_step if r in self._queues else -1) for r in live_ranks)
        return self._release(upto, live_ranks)

    def flush(self, live_ranks: Collection[int]) -> list[MergedStep]:
        """Every step still pending, merged over the ranks that reported it (epoch end)."""
        upto = max((q.last_step for q in self._queues.values()), default=-1)
        return self._release(upto, live_ranks)

    def drop_rank(self, rank: int) -> None:
        """Forget what a lost rank sent and had not been merged."""
        self._queues.pop(rank, None)

    def pending_entries(self, rank: int) -> int:
        queue = self._queues.get(rank)
        return 0 if queue is None else queue.pending

    def _release(self, upto: int, live_ranks: Collection[int]) -> list[MergedStep]:
        out: list[MergedStep] = []
        queues = [(r, q) for r, q in sorted(self._queues.items()) if r in live_ranks]
        while True:
            heads = [(q.head_step(), r, q) for r, q in queues]
            steps = [h for h, _, _ in heads if h is not None]
            if not steps:
                break
            step = min(steps)
            if step > upto:
                break
            by_rank: dict[int, dict[str, Any]] = {}
            samples: dict[int, float | None] = {}
            for head, rank, queue in heads:
                if head == step:
                    by_rank[rank], samples[rank] = queue.pop()
            merged = merge_logs(by_rank, samples, stateful_metrics=self._stateful)
            out.append(MergedStep(step, merged.logs, merged.spread, tuple(by_rank)))
            self.processed_step = step
        return out

    @property
    def pending_steps(self) -> int:
        return max((q.pending for q in self._queues.values()), default=0)
