"""Merge the batch logs of many workers, step by step, as they stream in.

`BatchMerger` holds each rank's frames of the epoch in progress and releases a
step once every live rank has reported it, merged by the rules of
`distcb.coordinator.aggregate` (`merge_logs`), with columns of aligned steps
merged at once (numpy) where the result is the same.
"""

from __future__ import annotations

import bisect
import collections
import math
from collections.abc import Collection, Iterable
from typing import Any

import numpy as np

from distcb.coordinator.aggregate import Spread, is_number, merge_logs, weighted_mean
from distcb.protocol.logs import Logs
from distcb.protocol.messages import BatchFrame


class MergedStep:
    """One merged step: its logs, the ranks merged, and (computed when first read) the
    per-metric spread over those ranks."""

    __slots__ = ("step", "logs", "ranks", "_spread", "_table", "_index")

    def __init__(
        self,
        step: int,
        logs: Logs,
        spread: dict[str, Spread] | None,
        ranks: tuple[int, ...],
        *,
        table: _SpreadTable | None = None,
        index: int = 0,
    ):
        self.step = step
        self.logs = logs
        self.ranks = ranks
        self._spread = spread
        self._table = table
        self._index = index

    @property
    def spread(self) -> dict[str, Spread]:
        if self._spread is None:
            self._spread = {} if self._table is None else self._table.at(self._index)
        return self._spread

    def __repr__(self) -> str:
        return f"MergedStep(step={self.step}, logs={self.logs}, ranks={self.ranks})"


class _SpreadTable:
    """The spreads of a run of merged steps, kept as columns until a step's is read."""

    __slots__ = ("ranks", "columns")

    def __init__(self, ranks: list[int]):
        self.ranks = ranks
        # key -> (min values, max values, index of the min's rank, index of the max's rank)
        self.columns: dict[str, tuple[list[float], list[float], list[int], list[int]]] = {}

    def at(self, i: int) -> dict[str, Spread]:
        ranks = self.ranks
        return {
            key: Spread(lo[i], hi[i], ranks[lo_at[i]], ranks[hi_at[i]])
            for key, (lo, hi, lo_at, hi_at) in self.columns.items()
            if lo_at[i] >= 0  # -1: not all numbers at this step, no spread (merge_logs's rule)
        }


# One column of one rank: (steps, key -> values, samples or None), a slice of its frames.
_Slice = tuple[list[int], dict[str, list[Any]], list[float | None] | None]

_FAST_RANGE = 1e30  # beyond (near float32's largest), `weighted_mean` merges the column
_EXACT_WEIGHT = 2.0**29  # float32 value x integer weight below this is exact in float64


class _RankQueue:
    """One rank's batch entries not merged yet: its frames, and a cursor into the first."""

    __slots__ = ("frames", "offset", "pending", "last_step")

    def __init__(self) -> None:
        self.frames: collections.deque[BatchFrame] = collections.deque()
        self.offset = 0
        self.pending = 0
        self.last_step = -1

    def take_upto(self, upto: int) -> list[_Slice]:
        """Its entries of steps <= `upto`, as column slices (one per frame touched)."""
        out: list[_Slice] = []
        frames = self.frames
        while frames:
            frame = frames[0]
            steps = frame.steps
            start = self.offset
            end = bisect.bisect_right(steps, upto, lo=start)
            if end == start:
                break
            whole = start == 0 and end == len(steps)
            samples = frame.samples
            out.append(
                (
                    steps if whole else steps[start:end],
                    frame.logs if whole else {k: v[start:end] for k, v in frame.logs.items()},
                    None if samples is None else samples if whole else samples[start:end],
                )
            )
            self.pending -= end - start
            if end == len(steps):
                frames.popleft()
                self.offset = 0
            else:
                self.offset = end
                break
        return out


class BatchMerger:
    """Collects the batch entries of one epoch and releases each step once every rank still
    training has reported it or a later step (a step a rank skipped is merged without it).

    Memory is what the ranks sent beyond the last released step: the roster bounds
    it per rank (the window rule, `Config.max_ahead_steps`).

    Steps are merged a run at a time, one column per metric: when every rank sent the
    same steps with the same metrics (the usual case) the weighted means of the whole
    run are computed with numpy, exactly as `merge_logs` computes each step's (the
    float64 sums are checked to be exact, and any column where they might not be, or
    that holds a value that is not a finite number, is merged by `merge_logs`'s rules
    one step at a time). Otherwise each step is merged by `merge_logs`.
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

    @property
    def pending_steps(self) -> int:
        return max((q.pending for q in self._queues.values()), default=0)

    def _release(self, upto: int, live_ranks: Collection[int]) -> list[MergedStep]:
        taken: list[tuple[int, list[_Slice]]] = []
        for rank, queue in sorted(self._queues.items()):
            if rank in live_ranks and queue.pending:
                slices = queue.take_upto(upto)
                if slices:
                    taken.append((rank, slices))
        if not taken:
            return []
        joined = [(rank, _join(slices)) for rank, slices in taken]
        if all(column is not None for _, column in joined):
            columns = [(rank, column) for rank, column in joined if column is not None]
            first_steps, first_logs = columns[0][1][0], columns[0][1][1]
            if all(
                c[0] == first_steps and c[1].keys() == first_logs.keys() for _, c in columns[1:]
            ):
                out = self._merge_aligned(columns)
                self.processed_step = out[-1].step
                return out
        out = self._merge_each(taken)
        if out:
            self.processed_step = out[-1].step
        return out

    def _merge_each(self, taken: list[tuple[int, list[_Slice]]]) -> list[MergedStep]:
        """Step by step with `merge_logs` (ranks that skipped steps, metrics that differ)."""
        per_step: dict[int, dict[int, tuple[dict[str, Any], float | None]]] = {}
        for rank, slices in taken:
            for steps, logs, samples in slices:
                keys = list(logs)
                columns = [logs[k] for k in keys]
                for i, step in enumerate(steps):
                    entry = {k: column[i] for k, column in zip(keys, columns, strict=True)}
                    per_step.setdefault(step, {})[rank] = (
                        entry,
                        None if samples is None else samples[i],
                    )
        out = []
        for step in sorted(per_step):
            entries = per_step[step]
            merged = merge_logs(
                {r: e[0] for r, e in entries.items()},
                {r: e[1] for r, e in entries.items()},
                stateful_metrics=self._stateful,
            )
            out.append(MergedStep(step, merged.logs, merged.spread, tuple(entries)))
        return out

    def _merge_aligned(self, columns: list[tuple[int, _Slice]]) -> list[MergedStep]:
        """Every rank sent the same steps with the same metrics: merge column by column."""
        ranks = [rank for rank, _ in columns]
        steps, chief_logs, _ = columns[0][1]
        keys = list(chief_logs)
        rank_tuple = tuple(ranks)
        if len(ranks) == 1:  # one worker: its values as it sent them
            if not keys:
                return [MergedStep(step, {}, {}, rank_tuple) for step in steps]
            return [
                MergedStep(step, dict(zip(keys, row, strict=True)), {}, rank_tuple)
                for step, row in zip(
                    steps, zip(*(chief_logs[k] for k in keys), strict=True), strict=True
                )
            ]
        n = len(steps)
        weights = _step_weights([column[2] for _, column in columns], n)
        table = _SpreadTable(ranks)
        merged: list[list[Any]] = []
        for key in keys:
            values = [column[1][key] for _, column in columns]
            if key in self._stateful or not _all_numbers(values):
                column, spread_or_none = self._merge_mixed(key, values, weights)
                merged.append(column)
                if spread_or_none is not None:
                    table.columns[key] = spread_or_none
                continue
            means, spread = _merge_numeric(values, weights)
            merged.append(means)
            table.columns[key] = spread
        rows: Iterable[tuple[Any, ...]] = zip(*merged, strict=True) if merged else [()] * n
        return [
            MergedStep(
                step, dict(zip(keys, row, strict=True)), None, rank_tuple, table=table, index=i
            )
            for i, (step, row) in enumerate(zip(steps, rows, strict=True))
        ]

    def _merge_mixed(
        self, key: str, values: list[list[Any]], weights: Any
    ) -> tuple[list[Any], tuple[list[float], list[float], list[int], list[int]] | None]:
        """A column with values that are not numbers (or a stateful metric), step by step
        as `merge_logs` does: the chief's value where any is not a number, else the
        weighted mean; spreads only where all are numbers."""
        out: list[Any] = []
        lo_v: list[float] = []
        hi_v: list[float] = []
        lo_at: list[int] = []
        hi_at: list[int] = []
        stateful = key in self._stateful
        for i in range(len(values[0])):
            if stateful or not all(is_number(v[i]) for v in values):
                out.append(values[0][i])
                lo_v.append(math.nan)
                hi_v.append(math.nan)
                lo_at.append(-1)
                hi_at.append(-1)
                continue
            numbers = [float(v[i]) for v in values]
            out.append(weighted_mean(numbers, weights[:, i].tolist()))
            lo, hi = _extremes(numbers)
            lo_v.append(numbers[lo])
            hi_v.append(numbers[hi])
            lo_at.append(lo)
            hi_at.append(hi)
        return out, ((lo_v, hi_v, lo_at, hi_at) if any(i >= 0 for i in lo_at) else None)


def _extremes(numbers: list[float]) -> tuple[int, int]:
    """Indices of the min and the max, the lowest index on ties (`merge_logs`'s order)."""
    order = range(len(numbers))
    return (
        min(order, key=lambda j: (numbers[j], j)),
        max(order, key=lambda j: (numbers[j], -j)),
    )


def _join(slices: list[_Slice]) -> _Slice | None:
    """A rank's slices as one column set, or None when its metrics change between frames."""
    if len(slices) == 1:
        return slices[0]
    keys = slices[0][1].keys()
    if any(s[1].keys() != keys for s in slices[1:]):
        return None
    steps = [step for s in slices for step in s[0]]
    logs = {k: [v for s in slices for v in s[1][k]] for k in keys}
    if all(s[2] is None for s in slices):
        return steps, logs, None
    samples = [x for s in slices for x in (s[2] if s[2] is not None else [None] * len(s[0]))]
    return steps, logs, samples


def _all_numbers(columns: list[list[Any]]) -> bool:
    for column in columns:
        for value in column:
            kind = type(value)
            if kind is not float and kind is not int:
                return False
    return True


def _step_weights(samples: list[list[float | None] | None], n: int) -> Any:
    """(ranks, steps) weights, as `_weights` gives them step by step: the samples, or 1.0
    for every rank at a step where one is unknown or none is positive."""
    if any(column is None for column in samples):
        return np.ones((len(samples), n))
    table = np.array(
        [[math.nan if x is None else x for x in column] for column in samples],  # type: ignore[union-attr]
        dtype=np.float64,
    )
    known = ~np.isnan(table).any(axis=0) & (np.nan_to_num(table).sum(axis=0) > 0)
    return np.where(known, table, 1.0)


def _merge_numeric(
    columns: list[list[float]], weights: Any
) -> tuple[list[float], tuple[list[float], list[float], list[int], list[int]]]:
    """Weighted means of (ranks, steps) numbers, each equal to what `weighted_mean` gives
    for that step, and their spreads; columns numpy cannot vouch for go through
    `weighted_mean` itself."""
    values = np.array(columns, dtype=np.float64)
    with np.errstate(all="ignore"):
        finite = np.isfinite(values).all(axis=0)
        in_range = (np.abs(values) <= _FAST_RANGE).all(axis=0)
        is32 = (values.astype(np.float32) == values).all(axis=0)
        integral = ((weights == np.floor(weights)) & (weights < _EXACT_WEIGHT)).all(axis=0)
        products = values * weights  # exact where is32 and integral
        total = weights.sum(axis=0)  # exact: integers
        counts = np.round(products)
        ratio_ok = (weights == 0) | ((counts / weights).astype(np.float32) == values)
        by_counts = ratio_ok.all(axis=0)
        count_means = (counts.sum(axis=0) / total).astype(np.float32).astype(np.float64)
        # The float64 sum of the products is exact (so equal to math.fsum) when every
        # partial sum is a multiple of the smallest float32 ulp below 2**53 times it.
        _, exponents = np.frexp(values)
        smallest = np.where(values != 0, exponents - 24, 10_000).min(axis=0)
        _, top = np.frexp(np.abs(products).sum(axis=0))
        sum_exact = (top + 1 - smallest) <= 53
        means = (products.sum(axis=0) / total).astype(np.float32).astype(np.float64)
        counts_exact = np.abs(counts).sum(axis=0) < 2.0**53  # their float64 sum is exact
    fast = finite & in_range & is32 & integral & np.where(by_counts, counts_exact, sum_exact)
    result = np.where(by_counts, count_means, means).tolist()
    for i in np.flatnonzero(~fast).tolist():
        result[i] = weighted_mean(values[:, i].tolist(), weights[:, i].tolist())
    lo_at = values.argmin(axis=0)
    hi_at = values.argmax(axis=0)
    lo = values[lo_at, np.arange(values.shape[1])].tolist()
    hi = values[hi_at, np.arange(values.shape[1])].tolist()
    lo_idx, hi_idx = lo_at.tolist(), hi_at.tolist()
    for i in np.flatnonzero(~finite).tolist():  # NaN orders as Python's min and max see it
        numbers = values[:, i].tolist()
        lo_idx[i], hi_idx[i] = _extremes(numbers)
        lo[i], hi[i] = numbers[lo_idx[i]], numbers[hi_idx[i]]
    return result, (lo, hi, lo_idx, hi_idx)
