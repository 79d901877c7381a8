"""ReduceLROnPlateau: parity with Keras 3, Keras 2's epsilon, multi-worker agreement."""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest

from distcb.callbacks import ReduceLROnPlateau
from distcb.protocol.decisions import SetLearningRate
from distcb.testing import simulate
from tests.helpers.keras_run import losses, run_distcb

FLAT = [1.0] * 8
CASES = {
    "patience2": ({"patience": 2, "factor": 0.5}, FLAT),
    "patience0": ({"patience": 0, "factor": 0.5}, [1.0, 0.9, 0.9, 0.8, 0.8]),
    "cooldown": ({"patience": 1, "factor": 0.5, "cooldown": 2}, FLAT),
    "cooldown_with_improvement": (
        {"patience": 1, "factor": 0.5, "cooldown": 1},
        [1.0, 1.0, 0.5, 0.5, 0.4, 0.4, 0.4],
    ),
    "min_lr_clamps_then_stays": ({"patience": 1, "factor": 0.1, "min_lr": 0.003}, FLAT),
    "min_lr_exact_float32": ({"patience": 0, "factor": 0.1, "min_lr": 0.001}, FLAT),
    "min_delta_default": ({"patience": 1, "factor": 0.5}, [1.0, 0.99995, 0.9999, 0.99985, 0.5]),
    "min_delta_large": ({"patience": 1, "factor": 0.5, "min_delta": -0.2}, [1.0, 0.9, 0.7, 0.6]),
    "mode_max": (
        {"patience": 1, "factor": 0.5, "mode": "max", "monitor": "val_accuracy"},
        [0.5, 0.6, 0.6, 0.7, 0.65],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_keras(case: str, keras: Any, run_keras: Any) -> None:
    kwargs, values = CASES[case]
    logs = losses(values, kwargs.get("monitor", "val_loss"))
    keras_cb = keras.callbacks.ReduceLROnPlateau(**kwargs)
    keras_run = run_keras([keras_cb], logs, learning_rate=0.01)
    ours = ReduceLROnPlateau(**kwargs)
    result = run_distcb([ours], logs, learning_rate=0.01)
    assert result.learning_rates == pytest.approx(keras_run.learning_rates, rel=1e-6)
    assert result.history.history["learning_rate"] == pytest.approx(
        [logs["learning_rate"] for logs in keras_run.epoch_logs], rel=1e-6
    )
    assert ours.wait == keras_cb.wait
    assert ours.cooldown_counter == keras_cb.cooldown_counter
    assert ours.best == pytest.approx(float(keras_cb.best))
    assert result.workers[0].learning_rate == pytest.approx(keras_run.final_learning_rate, rel=1e-6)
    # A decision only when the rate changes.
    rates = [*keras_run.learning_rates, keras_run.final_learning_rate]
    changes = sum(a != b for a, b in zip(rates, rates[1:], strict=False))
    assert sum(isinstance(d, SetLearningRate) for d in result.decisions) == changes


def test_missing_monitor_warns_and_still_logs_learning_rate(keras: Any, run_keras: Any) -> None:
    logs = [{"loss": 1.0}] * 3
    with pytest.warns(UserWarning, match="val_loss"):
        keras_run = run_keras([keras.callbacks.ReduceLROnPlateau(patience=0)], logs)
    ours = ReduceLROnPlateau(patience=0)
    with pytest.warns(UserWarning, match="`val_loss` which is not available"):
        result = run_distcb([ours], logs)
    assert result.learning_rates == pytest.approx(keras_run.learning_rates, rel=1e-6)
    assert result.history.history["learning_rate"] == pytest.approx([0.01] * 3)
    assert result.decisions == []


def test_warns_when_workers_send_no_learning_rate() -> None:
    cb = ReduceLROnPlateau(patience=0)
    with pytest.warns(UserWarning, match="did not report their learning rate"):
        result = simulate([cb], [[{"loss": 1.0, "val_loss": 1.0}]] * 2, params={})
    assert result.decisions == []


def test_keras2_epsilon_is_min_delta() -> None:
    with pytest.warns(DeprecationWarning, match="epsilon"):
        cb = ReduceLROnPlateau(epsilon=0.3, patience=1, factor=0.5)
    assert cb.min_delta == 0.3
    result = run_distcb([cb], losses([1.0, 0.8, 0.75]))
    # 0.8 is no improvement by more than 0.3: reduced after epoch 1.
    assert result.learning_rates == pytest.approx([0.01, 0.01, 0.005])


def test_workers_disagree_everyone_gets_the_same_rate() -> None:
    # Rank 0 improves each epoch; rank 1 (3x the validation samples) gets worse.
    epoch_logs = [
        [{"loss": 1.0, "val_loss": 1.0}, {"loss": 1.0, "val_loss": 1.0}],
        [{"loss": 1.0, "val_loss": 0.8}, {"loss": 1.0, "val_loss": 1.1}],
        [{"loss": 1.0, "val_loss": 0.7}, {"loss": 1.0, "val_loss": 1.2}],
    ]
    cb = ReduceLROnPlateau(patience=1, factor=0.5)
    result = simulate(
        [cb],
        epoch_logs,
        params={"learning_rate": 0.1, "directions": {"loss": "min"}},
        val_samples=[[100, 300]] * 3,
    )
    # Means: 1.0, (80 + 330) / 400 = 1.025, (70 + 360) / 400 = 1.075.
    assert result.history.history["val_loss"] == pytest.approx([1.0, 1.025, 1.075])
    assert [w.learning_rates for w in result.workers] == [[0.1, 0.1, 0.05]] * 2
    assert result.history.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.05])
    assert [w.learning_rate for w in result.workers] == [0.025, 0.025]


def test_state_round_trip_is_json() -> None:
    cb = ReduceLROnPlateau(patience=1, factor=0.5, cooldown=3)
    run_distcb([cb], losses([1.0, 1.0]))
    state = json.loads(json.dumps(cb.get_state(), allow_nan=False))
    assert state == {
        "best": 1.0,
        "wait": 0,
        "cooldown_counter": 3,
        "reductions": [{"epoch": 1, "learning_rate": 0.005}],
    }
    resumed = ReduceLROnPlateau(patience=1, factor=0.5, cooldown=3)
    resumed.set_state(state)
    run_distcb([resumed], losses([1.0]))
    assert resumed.cooldown_counter == 2
    assert resumed.best == 1.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"factor": 1.0}, ValueError, "factor >= 1.0.*Received factor=1.0"),
        ({"factor": 2}, ValueError, "factor=2"),
        ({"factor": -0.5}, ValueError, "factor must be >= 0.0"),
        ({"mode": 1}, TypeError, "mode must be one of"),
        ({"min_lr": -1}, ValueError, "min_lr must be >= 0.0"),
        ({"cooldown": None}, TypeError, "cooldown must be an int"),
        ({"wobble": 1, "epsilon": 0.1}, TypeError, r"unexpected keyword arguments \['wobble'\]"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(error, match=match):
            ReduceLROnPlateau(**kwargs)
