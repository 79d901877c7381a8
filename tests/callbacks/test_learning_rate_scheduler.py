"""LearningRateScheduler: parity with Keras 3, the schedule's contract, multi-worker."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from distcb.callbacks import LearningRateScheduler
from distcb.coordinator.model_proxy import DecisionRecorder, ModelProxy
from distcb.protocol.decisions import SetLearningRate
from distcb.testing import simulate
from tests.helpers.keras_run import losses, run_distcb


def halve_after_first(epoch: int, lr: float) -> float:
    return lr if epoch == 0 else lr * 0.5


def by_epoch_only(epoch: int) -> float:
    return 0.1 / (epoch + 1)


def numpy_float32(epoch: int, lr: float) -> Any:
    return np.float32(0.02 * (epoch + 1))


@pytest.mark.parametrize("schedule", [halve_after_first, by_epoch_only, numpy_float32])
def test_parity_with_keras(schedule: Callable[..., Any], keras: Any, run_keras: Any) -> None:
    logs = losses([1.0, 0.9, 0.8, 0.7])
    keras_run = run_keras([keras.callbacks.LearningRateScheduler(schedule)], logs)
    result = run_distcb([LearningRateScheduler(schedule)], logs)
    assert result.learning_rates == pytest.approx(keras_run.learning_rates, rel=1e-6)
    assert result.history.history["learning_rate"] == pytest.approx(
        [logs["learning_rate"] for logs in keras_run.epoch_logs], rel=1e-6
    )
    sets = [d for d in result.decisions if isinstance(d, SetLearningRate)]
    assert [(d.at.phase, d.at.epoch) for d in sets] == [("epoch_begin", e) for e in range(4)]


def test_int_result_is_a_value_error_like_keras(keras: Any, run_keras: Any) -> None:
    with pytest.raises(ValueError, match="should be a float"):
        run_keras([keras.callbacks.LearningRateScheduler(lambda epoch: 1)], losses([1.0]))
    with pytest.raises(ValueError, match="should be a float. Received 1 of type int at epoch 0"):
        run_distcb([LearningRateScheduler(lambda epoch: 1)], losses([1.0]))


def test_other_results_are_value_errors() -> None:
    for bad in ["0.1", None, True, np.int64(2)]:
        cb = LearningRateScheduler(lambda epoch, lr, bad=bad: bad)
        cb.set_model(ModelProxy(DecisionRecorder(), learning_rate=0.1))
        with pytest.raises(ValueError, match=re.escape(f"Received {bad!r} of type")):
            cb.on_epoch_begin(0)


def test_not_callable_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="must be a callable.*received 0.1"):
        LearningRateScheduler(0.1)  # type: ignore[arg-type]


def test_every_worker_gets_the_schedule() -> None:
    cb = LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5**epoch)
    result = simulate(
        [cb],
        [[{"loss": 1.0}, {"loss": 2.0}]] * 3,
        params={"learning_rate": 0.3, "directions": {"loss": "min"}},
    )
    assert [w.learning_rates for w in result.workers] == [[0.1, 0.05, 0.025]] * 2
    assert json.loads(json.dumps(cb.get_state())) == {
        "learning_rates": [
            {"epoch": 0, "learning_rate": 0.1},
            {"epoch": 1, "learning_rate": 0.05},
            {"epoch": 2, "learning_rate": 0.025},
        ]
    }
    other = LearningRateScheduler(lambda epoch: 0.1)
    other.set_state(cb.get_state())
    assert other.get_state() == cb.get_state()
