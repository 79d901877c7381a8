import pytest

from distcb.callbacks import BaseLogger, Callback, CallbackList, History
from distcb.testing import simulate


def test_keras2_and_keras3_batch_hook_names_alias_each_other():
    seen = []

    class Keras2Style(Callback):
        def on_batch_end(self, batch, logs=None):
            seen.append(("k2", batch, logs["loss"]))

    class Keras3Style(Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(("k3", batch, logs["loss"]))

    simulate(
        [Keras2Style(), Keras3Style()],
        [[{"loss": 1.0}, {"loss": 1.0}]],
        batch_logs=[[[{"loss": 0.5}, {"loss": 1.5}], [{"loss": 0.25}, {"loss": 0.75}]]],
    )
    assert seen == [("k2", 0, 1.0), ("k3", 0, 1.0), ("k2", 1, 0.5), ("k3", 1, 0.5)]


def test_base_logger_sample_weighted_epoch_average_and_stateful_metrics():
    logger = BaseLogger(stateful_metrics=["auc"])
    logger.set_params({"metrics": ["loss", "auc"]})
    logger.on_epoch_begin(0)
    logger.on_batch_end(0, {"size": 32, "loss": 1.0, "auc": 0.5})
    logger.on_batch_end(1, {"size": 8, "loss": 2.0, "auc": 0.7})
    logs = {}
    logger.on_epoch_end(0, logs)
    assert logs["loss"] == pytest.approx((32 * 1.0 + 8 * 2.0) / 40)
    assert logs["auc"] == 0.7  # stateful: as it is at the last batch
    logger.on_epoch_begin(1)
    logs = {}
    logger.on_epoch_end(1, logs)
    assert logs == {}  # totals reset each epoch


def test_base_logger_rejects_a_string_for_stateful_metrics():
    with pytest.raises(TypeError, match="collection of names"):
        BaseLogger(stateful_metrics="auc")


def test_history_keeps_every_epoch_and_a_given_history_is_reused():
    history = History()
    result = simulate([history], [[{"loss": 1.0}], [{"loss": 0.5}]])
    assert result.history is history
    assert history.history == {"loss": [1.0, 0.5]}
    assert history.epoch == [0, 1]


def test_callback_list_rejects_non_callbacks():
    with pytest.raises(TypeError, match="Keras-style callback objects"):
        CallbackList([object()])
