"""Unmodified keras.callbacks.Callback subclasses run on the coordinator; their effects count."""

from __future__ import annotations

from typing import Any

import pytest

from distcb.protocol.decisions import SetLearningRate, StopTraining
from distcb.testing import simulate

PARAMS = {"learning_rate": 0.01, "directions": {"loss": "min"}}


def test_seed_loss_history_sees_aggregated_batch_losses(keras: Any) -> None:
    class LossHistory(keras.callbacks.Callback):  # as in the seed's documentation
        def on_train_begin(self, logs={}):  # noqa: B006
            self.losses = []

        def on_batch_end(self, batch, logs={}):  # noqa: B006
            self.losses.append(logs.get("loss"))

    history = LossHistory()
    simulate(
        [history],
        [[{"loss": 1.0}, {"loss": 2.0}]] * 2,
        batch_logs=[[[{"loss": 1.0}, {"loss": 3.0}], [{"loss": 0.5}, {"loss": 1.5}]]] * 2,
        params=PARAMS,
    )
    assert history.losses == [2.0, 1.0, 2.0, 1.0]


def test_stop_training_from_a_keras_callback(keras: Any) -> None:
    class StopAfterSecondEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    result = simulate([StopAfterSecondEpoch()], [[{"loss": 1.0}, {"loss": 1.0}]] * 4, params=PARAMS)
    assert result.stopped_epoch == 1
    assert [type(d) for d in result.decisions] == [StopTraining]
    assert [w.epochs_run for w in result.workers] == [2, 2]


@pytest.mark.parametrize("style", ["assign_attribute", "variable_assign"])
def test_learning_rate_from_a_keras_callback(style: str, keras: Any) -> None:
    class SetLearningRateAtEpochOne(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                if style == "assign_attribute":
                    self.model.optimizer.learning_rate = 0.5
                else:
                    self.model.optimizer.learning_rate.assign(0.5)

    result = simulate(
        [SetLearningRateAtEpochOne()], [[{"loss": 1.0}, {"loss": 1.0}]] * 3, params=PARAMS
    )
    assert result.learning_rates == [0.01, 0.5, 0.5]
    assert [w.learning_rates for w in result.workers] == [[0.01, 0.5, 0.5]] * 2
    (decision,) = result.decisions
    assert isinstance(decision, SetLearningRate)
    assert decision.at.phase == "epoch_begin"
    assert decision.at.epoch == 1


def test_keras_callback_reads_params_and_logs(keras: Any) -> None:
    class Peek(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            self.seen = (self.params["num_workers"], dict(logs or {}))

    peek = Peek()
    simulate([peek], [[{"loss": 1.0}, {"loss": 3.0}]], params=PARAMS)
    assert peek.seen == (2, {"loss": 2.0})
