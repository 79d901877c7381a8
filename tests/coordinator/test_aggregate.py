import math

import numpy as np
import pytest

from distcb.coordinator.aggregate import merge_logs, round32
from distcb.coordinator.batch_merge import BatchMerger
from distcb.protocol.errors import AggregationError
from distcb.protocol.messages import BatchFrame


def test_epoch_logs_are_sample_weighted_and_val_uses_val_samples():
    merged = merge_logs(
        {0: {"loss": 1.0, "val_loss": 2.0}, 1: {"loss": 4.0, "val_loss": 5.0}},
        {0: 30, 1: 10},
        val_samples={0: 10, 1: 30},
    )
    assert merged.logs["loss"] == round32((1.0 * 30 + 4.0 * 10) / 40)
    assert merged.logs["val_loss"] == round32((2.0 * 10 + 5.0 * 30) / 40)
    assert merged.spread["loss"].min == 1.0
    assert merged.spread["loss"].min_rank == 0
    assert merged.spread["loss"].max == 4.0
    assert merged.spread["loss"].max_rank == 1
    assert "spread" not in merged.logs


def test_unknown_samples_mean_equal_weights():
    merged = merge_logs({0: {"loss": 1.0}, 1: {"loss": 3.0}}, {0: 30, 1: None})
    assert merged.logs["loss"] == 2.0


def test_stateful_metrics_and_non_numbers_come_from_the_chief():
    merged = merge_logs(
        {2: {"auc": 0.9, "tag": [1.0, 2.0]}, 1: {"auc": 0.5, "tag": [3.0]}},
        {1: 1, 2: 1},
        stateful_metrics={"auc"},
    )
    assert merged.logs == {"auc": 0.5, "tag": [3.0]}  # lowest live rank is the chief


def test_one_worker_nan_or_inf_is_not_hidden_by_the_mean():
    assert math.isnan(merge_logs({0: {"loss": 0.1}, 1: {"loss": math.nan}}, {}).logs["loss"])
    assert merge_logs({0: {"loss": 0.1}, 1: {"loss": math.inf}}, {}).logs["loss"] == math.inf
    both = merge_logs({0: {"loss": -math.inf}, 1: {"loss": math.inf}}, {}).logs["loss"]
    assert math.isnan(both)


def test_missing_key_names_rank_and_key():
    with pytest.raises(AggregationError, match=r"rank 1's logs lack the key 'val_loss'") as info:
        merge_logs({0: {"loss": 1.0, "val_loss": 1.0}, 1: {"loss": 1.0}}, {})
    assert info.value.rank == 1
    assert info.value.key == "val_loss"


def frame(rank, steps, losses, samples=None):
    return BatchFrame(rank=rank, epoch=0, steps=steps, logs={"loss": losses}, samples=samples)


def test_batch_merger_releases_a_step_once_every_live_rank_sent_it():
    merger = BatchMerger(0)
    merger.add(0, frame(0, [0, 1], [1.0, 0.8], [10.0, 20.0]))
    assert merger.pop_ready({0, 1}) == []
    merger.add(1, frame(1, [0], [3.0], [30.0]))
    ready = merger.pop_ready({0, 1})
    assert [s.step for s in ready] == [0]
    assert ready[0].logs["loss"] == round32((1.0 * 10 + 3.0 * 30) / 40)
    # Rank 1 is lost: step 1 is complete among the live ranks.
    merger.drop_rank(1)
    ready = merger.pop_ready({0})
    assert [(s.step, s.logs["loss"], s.ranks) for s in ready] == [(1, 0.8, (0,))]
    assert merger.processed_step == 1


def test_batch_merger_flush_merges_partial_steps_and_skipped_steps():
    merger = BatchMerger(3)
    merger.add(0, frame(0, [0, 1, 3], [1.0, 2.0, 4.0]))
    merger.add(1, frame(1, [0, 3], [3.0, 6.0]))  # rank 1 skipped step 1 (steps_per_execution)
    ready = merger.pop_ready({0, 1})
    assert [(s.step, s.ranks) for s in ready] == [(0, (0, 1)), (1, (0,)), (3, (0, 1))]
    assert ready[-1].logs["loss"] == 5.0
    merger.add(0, frame(0, [4], [1.0]))
    assert [(s.step, s.ranks) for s in merger.flush({0, 1})] == [(4, (0,))]
    assert merger.pending_entries(0) == merger.pending_entries(1) == 0


def test_means_that_are_mathematically_equal_are_equal():
    # Replica accuracies as Keras logs them (float32): 16/35 and 34/35, then 25/35 twice.
    def acc(k):
        return float(np.float32(k / 35))

    uneven = merge_logs({0: {"acc": acc(16)}, 1: {"acc": acc(34)}}, {0: 35, 1: 35})
    even = merge_logs({0: {"acc": acc(25)}, 1: {"acc": acc(25)}}, {0: 35, 1: 35})
    assert uneven.logs["acc"] == even.logs["acc"] == acc(25)
    # Without the float32 rounding the plain float64 means differ: the test can fail.
    assert (acc(16) + acc(34)) / 2 != acc(25)


def test_round32_matches_numpy_float32():
    for value in [0.1, 1 / 3, 1e-40, 3.4e38, -2.5e-7, 123456.789]:
        assert round32(value) == float(np.float32(value))
    assert round32(1e39) == math.inf  # beyond float32, as numpy says
    assert math.isnan(round32(math.nan))


# ---------------------------------------------------------------- equal means compare equal


def f32(value: float) -> float:
    """What Keras logs: the float32 nearest to `value`, as a Python float."""
    return float(np.float32(value))


def val_accuracy(hits: dict[int, int], samples: dict[int, int]) -> float:
    per_rank = {r: {"val_accuracy": f32(hits[r] / samples[r])} for r in hits}
    return merge_logs(per_rank, samples, val_samples=samples).logs["val_accuracy"]


def test_replica_accuracies_with_equal_means_merge_to_the_same_value():
    # Two replicas validating on all 70 samples: 55 + 57 hits and 56 + 56 hits are the same
    # mean; a float64 mean of the float32 logs tells them apart (0.79999998 vs 0.80000001),
    # and so does rounding that mean to float32.
    samples = {0: 70, 1: 70}
    assert val_accuracy({0: 55, 1: 57}, samples) == val_accuracy({0: 56, 1: 56}, samples)
    assert val_accuracy({0: 43, 1: 69}, samples) == f32(112 / 140)
    assert val_accuracy({0: 31, 1: 33}, {0: 35, 1: 35}) == f32(32 / 35)


def test_merged_accuracy_is_what_one_process_over_all_samples_logs():
    # Equal shards: every pair of hit counts with the same sum merges to one value, the
    # float32 of total hits / total samples (Keras's `total / count` in float32).
    for n in range(1, 41):
        for a in range(n + 1):
            for b in range(a, n + 1):
                merged = val_accuracy({0: a, 1: b}, {0: n, 1: n})
                assert merged == f32((a + b) / (2 * n)), (n, a, b)
    # Uneven shards (36 + 34 of 70 samples), three ranks of different sizes.
    for k0 in range(37):
        for k1 in range(35):
            assert val_accuracy({0: k0, 1: k1}, {0: 36, 1: 34}) == f32((k0 + k1) / 70)
    assert val_accuracy({0: 5, 1: 0, 2: 9}, {0: 7, 1: 3, 2: 11}) == f32(14 / 21)


def test_float32_logs_merge_to_float32_and_other_floats_keep_every_bit():
    merged = merge_logs(
        {0: {"loss": f32(0.3), "x": 0.1}, 1: {"loss": f32(0.7), "x": 0.2}}, {0: 30, 1: 10}
    ).logs
    assert merged["loss"] == f32((f32(0.3) * 30 + f32(0.7) * 10) / 40)
    assert merged["x"] == math.fsum([0.1 * 30, 0.2 * 10]) / 40  # not float32: unrounded
    # One rank: its value, untouched.
    assert merge_logs({3: {"loss": f32(0.123)}}, {3: 64}).logs["loss"] == f32(0.123)
    # A rank with no samples adds nothing, whatever it reports.
    empty = merge_logs(
        {0: {"val_accuracy": f32(5 / 7)}, 1: {"val_accuracy": 0.0}}, {}, val_samples={0: 7, 1: 0}
    )
    assert empty.logs["val_accuracy"] == f32(5 / 7)
    # Values beyond float32's range stay as they are.
    assert merge_logs({0: {"m": 1e300}, 1: {"m": 1e300}}, {}).logs["m"] == 1e300
