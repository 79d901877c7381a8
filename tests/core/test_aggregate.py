import math

import pytest

from distcb.core.aggregate import BatchMerger, merge_logs
from distcb.core.errors import AggregationError
from distcb.core.messages import BatchEntry


def test_epoch_logs_are_sample_weighted_and_val_uses_val_samples():
    merged = merge_logs(
        {0: {"loss": 1.0, "val_loss": 2.0}, 1: {"loss": 4.0, "val_loss": 5.0}},
        {0: 30, 1: 10},
        val_samples={0: 10, 1: 30},
    )
    assert merged.logs["loss"] == pytest.approx((1.0 * 30 + 4.0 * 10) / 40)
    assert merged.logs["val_loss"] == pytest.approx((2.0 * 10 + 5.0 * 30) / 40)
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
    with pytest.raises(AggregationError, match=r"\[Rank 1\] logs lack the key 'val_loss'") as info:
        merge_logs({0: {"loss": 1.0, "val_loss": 1.0}, 1: {"loss": 1.0}}, {})
    assert info.value.rank == 1
    assert info.value.key == "val_loss"


def test_batch_merger_releases_a_step_once_every_live_rank_sent_it():
    merger = BatchMerger(0)
    merger.add(0, [BatchEntry(0, {"loss": 1.0}, 10), BatchEntry(1, {"loss": 0.8}, 20)])
    assert merger.pop_ready({0, 1}) == []
    merger.add(1, [BatchEntry(0, {"loss": 3.0}, 30)])
    ready = merger.pop_ready({0, 1})
    assert [s.step for s in ready] == [0]
    assert ready[0].logs["loss"] == pytest.approx((1.0 * 10 + 3.0 * 30) / 40)
    # Rank 1 is lost: step 1 is complete among the live ranks.
    ready = merger.pop_ready({0})
    assert [(s.step, s.logs["loss"], s.ranks) for s in ready] == [(1, 0.8, (0,))]


def test_batch_merger_flush_merges_partial_steps_and_rejects_reordering():
    merger = BatchMerger(3)
    merger.add(0, [BatchEntry(0, {"loss": 1.0}), BatchEntry(1, {"loss": 2.0})])
    merger.add(1, [BatchEntry(0, {"loss": 3.0})])
    assert [s.step for s in merger.pop_ready({0, 1})] == [0]
    assert [(s.step, s.ranks) for s in merger.flush({0, 1})] == [(1, (0,))]
    with pytest.raises(AggregationError, match="step order"):
        merger.add(1, [BatchEntry(0, {"loss": 1.0})])
