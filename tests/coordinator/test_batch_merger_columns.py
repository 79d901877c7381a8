"""The column-wise BatchMerger merges every step exactly as `merge_logs` merges it alone.

The reference below is the definition: step s is released once every live rank
reported s or a later step, merged with `merge_logs` over the ranks that
reported it. Hypothesis drives both with random frames (float32 logs, counts
that make exact accuracies, NaN and infinities, floats that are not float32,
strings, unknown and zero sample counts, skipped steps, metrics that differ
between ranks) and compares logs, ranks and spreads bit for bit.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distcb.coordinator.aggregate import merge_logs
from distcb.coordinator.batch_merge import BatchMerger
from distcb.protocol.errors import AggregationError
from distcb.protocol.messages import BatchFrame


def f32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


class ReferenceMerger:
    """Step by step, with merge_logs (the semantics the column merge must keep)."""

    def __init__(self) -> None:
        self.entries: dict[int, dict[int, tuple[dict, float | None]]] = {}
        self.last: dict[int, int] = {}
        self.released = -1

    def add(self, rank: int, frame: BatchFrame) -> None:
        for i, step in enumerate(frame.steps):
            logs = {k: v[i] for k, v in frame.logs.items()}
            samples = frame.samples[i] if frame.samples is not None else None
            self.entries.setdefault(rank, {})[step] = (logs, samples)
        if frame.steps:
            self.last[rank] = frame.steps[-1]

    def pop_ready(self, live: set[int], *, flush: bool = False):
        if flush:
            upto = max(self.last.values(), default=-1)
        else:
            upto = min(self.last.get(r, -1) for r in live)
        steps = sorted({s for r in live for s in self.entries.get(r, {}) if s <= upto})
        out = []
        for step in steps:
            per_rank = {
                r: self.entries[r].pop(step)
                for r in sorted(live)
                if step in self.entries.get(r, {})
            }
            merged = merge_logs(
                {r: e[0] for r, e in per_rank.items()}, {r: e[1] for r, e in per_rank.items()}
            )
            out.append((step, merged.logs, merged.spread, tuple(per_rank)))
        return out


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def spreads_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(
        same(a[k].min, b[k].min)
        and same(a[k].max, b[k].max)
        and a[k].min_rank == b[k].min_rank
        and a[k].max_rank == b[k].max_rank
        for k in a
    )


samples_per_step = 32


def value_strategy(kind: str, step: int):
    if kind == "accuracy":  # hits / samples seen, as float32: the exact-count path
        seen = samples_per_step * (step + 1)
        return st.integers(0, seen).map(lambda k: f32(k / seen))
    if kind == "float32":
        return st.floats(-1e3, 1e3, allow_nan=False, width=32)
    if kind == "wide":  # float32 values of very different magnitudes: sums may be inexact
        return st.sampled_from([1e-30, 3.0, 1e20, -1e20, -7.5e-12, 0.0, 0.5, 2.5e7]).map(f32)
    if kind == "float64":
        return st.floats(-1e3, 1e3, allow_nan=False)
    if kind == "special":
        return st.sampled_from([math.nan, math.inf, -math.inf, 0.5, -0.0, 1e300])
    return st.sampled_from(["text", None, True, 0.25])  # mixed: not all numbers


@st.composite
def jobs(draw):
    ranks = draw(st.integers(1, 4))
    steps = draw(st.integers(1, 40))
    kinds = draw(
        st.lists(
            st.sampled_from(["accuracy", "float32", "wide", "float64", "special", "mixed"]),
            min_size=1,
            max_size=3,
        )
    )
    keys = [f"m{i}" for i in range(len(kinds))]
    sample_mode = draw(st.sampled_from(["counts", "none", "some_none", "zero", "fractional"]))
    skip = draw(st.booleans())
    differ = draw(st.booleans()) and ranks > 1
    frames: list[tuple[int, BatchFrame]] = []
    for rank in range(ranks):
        own_steps = [s for s in range(steps) if not (skip and draw(st.integers(0, 4)) == 0)]
        own_keys = keys[:-1] if differ and rank == ranks - 1 and len(keys) > 1 else keys
        i = 0
        while i < len(own_steps):
            size = draw(st.integers(1, 12))
            chunk = own_steps[i : i + size]
            i += size
            logs = {
                k: [draw(value_strategy(kinds[keys.index(k)], s)) for s in chunk] for k in own_keys
            }
            if sample_mode == "none":
                samples = None
            elif sample_mode == "some_none":
                samples = [None if draw(st.booleans()) else float(32 * (s + 1)) for s in chunk]
            elif sample_mode == "zero":
                samples = [0.0 for _ in chunk]
            elif sample_mode == "fractional":
                samples = [32.5 * (s + 1) for s in chunk]
            else:
                samples = [float(samples_per_step * (s + 1)) for s in chunk]
            frames.append(
                (rank, BatchFrame(rank=rank, epoch=0, steps=chunk, logs=logs, samples=samples))
            )
    order = draw(st.permutations(range(len(frames))))
    # Each rank's frames stay in its own order; ranks interleave as drawn.
    per_rank: dict[int, list[BatchFrame]] = {}
    for rank, frame in frames:
        per_rank.setdefault(rank, []).append(frame)
    schedule = []
    cursor = {r: 0 for r in per_rank}
    for index in order:
        rank = frames[index][0]
        schedule.append((rank, per_rank[rank][cursor[rank]]))
        cursor[rank] += 1
    return ranks, schedule


@settings(max_examples=300, deadline=None)
@given(jobs())
def test_column_merge_equals_merge_logs_step_by_step(job):
    ranks, schedule = job
    live = set(range(ranks))
    merger, reference = BatchMerger(0), ReferenceMerger()
    got, want = [], []

    def both(ours, theirs):
        # Metrics that differ between ranks: both raise AggregationError, at the same call.
        try:
            expected = theirs()
        except AggregationError:
            with pytest.raises(AggregationError):
                ours()
            return False
        got.extend(ours())
        want.extend(expected)
        return True

    for rank, frame in schedule:
        merger.add(rank, frame)
        reference.add(rank, frame)
        if not both(lambda: merger.pop_ready(live), lambda: reference.pop_ready(live)):
            return
    if not both(lambda: merger.flush(live), lambda: reference.pop_ready(live, flush=True)):
        return
    assert [s.step for s in got] == [w[0] for w in want]
    for step, (_, logs, spread, step_ranks) in zip(got, want, strict=True):
        assert step.ranks == step_ranks
        assert same(step.logs, logs), (step.step, step.logs, logs)
        assert spreads_equal(step.spread, spread), (step.step, step.spread, spread)


def test_sums_numpy_cannot_add_exactly_are_added_exactly():
    # 1e20 + 0.5 - 1e20: a float64 sum in any order loses the 0.5; math.fsum keeps it.
    merger = BatchMerger(0)
    for rank, value in enumerate([1e20, 0.5, -1e20]):
        merger.add(rank, BatchFrame(rank=rank, epoch=0, steps=[0], logs={"m": [f32(value)]}))
    (step,) = merger.pop_ready({0, 1, 2})
    assert step.logs["m"] == f32(0.5 / 3)


def test_equal_accuracies_merge_equal_through_the_column_path():
    # 8 ranks of 32 samples, 50 steps: each step merges to float32(total hits / 256),
    # what one process over all 256 samples logs, whatever the split of the hits.
    n, steps = 8, 50
    rng = np.random.default_rng(0)
    hits = rng.integers(0, 33, (n, steps))
    merger = BatchMerger(0)
    for rank in range(n):
        merger.add(
            rank,
            BatchFrame(
                rank=rank,
                epoch=0,
                steps=list(range(steps)),
                logs={"accuracy": [f32(int(h) / 32) for h in hits[rank]]},
                samples=[32.0] * steps,
            ),
        )
    merged = merger.pop_ready(set(range(n)))
    assert [m.logs["accuracy"] for m in merged] == [
        f32(int(total) / (32 * n)) for total in hits.sum(axis=0)
    ]
