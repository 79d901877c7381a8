"""EarlyStopping: parity with keras.callbacks.EarlyStopping (Keras 3), then multi-worker."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import pytest

from distcb.callbacks import EarlyStopping, LambdaCallback
from distcb.coordinator.model_proxy import DecisionRecorder, ModelProxy
from distcb.protocol.decisions import RestoreWeights, SnapshotWeights, StopTraining
from distcb.testing import simulate
from tests.helpers.keras_run import losses, run_distcb

NAN = float("nan")

# (EarlyStopping kwargs, monitored values per epoch); monitor is val_loss unless given.
CASES = {
    "patience0": ({"patience": 0}, [1.0, 0.9, 0.95, 0.8]),
    "patience1_same_as_0": ({"patience": 1}, [1.0, 0.9, 0.95, 0.8]),
    "patience2": ({"patience": 2}, [1.0, 0.9, 0.95, 0.96, 0.5]),
    "baseline_beaten": ({"patience": 2, "baseline": 0.95}, [1.0, 0.9, 0.92, 0.93, 0.94]),
    "baseline_never_beaten": (
        {"patience": 2, "baseline": 0.5, "restore_best_weights": True},
        [1.0, 0.9, 0.95, 0.96],
    ),
    "baseline_patience0": ({"patience": 0, "baseline": 0.5}, [1.0, 1.1, 0.4]),
    "min_delta_positive": ({"patience": 1, "min_delta": 0.1}, [1.0, 0.95, 0.85, 0.8]),
    "min_delta_negative": ({"patience": 1, "min_delta": -0.1}, [1.0, 0.95, 0.85, 0.8]),
    "min_delta_equal_is_no_improvement": ({"patience": 1, "min_delta": 0.5}, [1.0, 0.5, 0.25]),
    "start_from_epoch": ({"patience": 0, "start_from_epoch": 2}, [1.0, 2.0, 3.0, 2.5, 2.6]),
    "restore_when_stopped": (
        {"patience": 1, "restore_best_weights": True},
        [1.0, 0.5, 0.7, 0.8, 0.1],
    ),
    "restore_when_not_stopped": (
        {"patience": 10, "restore_best_weights": True},
        [1.0, 0.5, 0.7],
    ),
    "restore_after_start_from_epoch": (
        {"patience": 1, "restore_best_weights": True, "start_from_epoch": 1},
        [0.1, 0.5, 0.7, 0.8],
    ),
    "mode_max": (
        {"patience": 1, "mode": "max", "monitor": "val_accuracy"},
        [0.5, 0.6, 0.55, 0.58],
    ),
    "nan_first": ({"patience": 1}, [NAN, 1.0, 0.9]),
    "never_stops": ({"patience": 3}, [1.0, 0.9, 0.8, 0.7]),
}


def _assert_same(keras_cb: Any, ours: EarlyStopping, keras_run: Any, result: Any) -> None:
    assert result.history.epoch == list(range(keras_run.epochs_run))
    assert result.stopped_epoch == keras_run.stopped_epoch
    assert ours.stopped_epoch == keras_cb.stopped_epoch
    assert ours.wait == keras_cb.wait
    assert ours.best_epoch == keras_cb.best_epoch
    if keras_cb.best is None or math.isnan(float(keras_cb.best)):
        assert ours.best is None or math.isnan(ours.best)
    else:
        assert ours.best == pytest.approx(float(keras_cb.best))
    if ours.restore_best_weights:
        assert result.weights == keras_run.weights


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_keras(case: str, keras: Any, run_keras: Any) -> None:
    kwargs, values = CASES[case]
    key = kwargs.get("monitor", "val_loss")
    logs = losses(values, key)
    keras_cb = keras.callbacks.EarlyStopping(**kwargs)
    keras_run = run_keras([keras_cb], logs)
    ours = EarlyStopping(**kwargs)
    result = run_distcb([ours], logs)
    _assert_same(keras_cb, ours, keras_run, result)


def test_mode_auto_uses_worker_directions_like_keras_compiled_metrics(
    keras: Any, np: Any, keras_model: Any, run_keras: Any
) -> None:
    model = keras_model(metrics=["accuracy"])
    model.train_on_batch(np.zeros((2, 2)), np.zeros((2, 1)))  # builds the compiled metrics
    logs = losses([0.5, 0.6, 0.55, 0.58], "val_accuracy")
    keras_cb = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=1)
    keras_run = run_keras([keras_cb], logs, model=model)
    ours = EarlyStopping(monitor="val_accuracy", patience=1)
    result = run_distcb([ours], logs, directions={"loss": "min", "accuracy": "max"})
    assert ours.direction == "max"
    _assert_same(keras_cb, ours, keras_run, result)
    assert result.stopped_epoch == 2


def test_restore_when_another_callback_stops(keras: Any, run_keras: Any) -> None:
    logs = losses([1.0, 0.5, 0.7, 0.9, 0.1])
    kwargs = {"patience": 10, "restore_best_weights": True}

    def stopper(lambda_cls: Any) -> Any:
        def on_epoch_end(epoch: int, logs: Any) -> None:
            cb.model.stop_training = epoch == 2

        cb = lambda_cls(on_epoch_end=on_epoch_end)
        return cb

    keras_cb = keras.callbacks.EarlyStopping(**kwargs)
    keras_run = run_keras([keras_cb, stopper(keras.callbacks.LambdaCallback)], logs)
    ours = EarlyStopping(**kwargs)
    result = run_distcb([ours, stopper(LambdaCallback)], logs)
    _assert_same(keras_cb, ours, keras_run, result)
    assert result.stopped_epoch == 2
    assert result.weights == 1.0


def test_missing_monitor_warns_and_skips(keras: Any, run_keras: Any) -> None:
    logs = [{"loss": v} for v in (1.0, 2.0, 3.0)]
    keras_cb = keras.callbacks.EarlyStopping(patience=0)
    with pytest.warns(UserWarning, match="val_loss"):
        keras_run = run_keras([keras_cb], logs)
    ours = EarlyStopping(patience=0)
    with pytest.warns(UserWarning, match="`val_loss` which is not available"):
        result = run_distcb([ours], logs)
    _assert_same(keras_cb, ours, keras_run, result)
    assert result.stopped_epoch is None
    assert ours.best is None


def test_no_stop_at_epoch_zero_even_without_patience(keras: Any, keras_model: Any) -> None:
    """The `epoch > 0` rule: only reachable when `best` is already set (a resumed run)."""
    keras_cb = keras.callbacks.EarlyStopping(patience=0, monitor="loss")
    model = keras_model()
    keras_cb.set_model(model)
    keras_cb.on_train_begin()
    keras_cb.best = 0.1
    model.stop_training = False
    keras_cb.on_epoch_end(0, {"loss": 1.0})

    ours = EarlyStopping(patience=0, monitor="loss")
    ours.set_model(ModelProxy(DecisionRecorder()))
    ours.set_state({"wait": 0, "stopped_epoch": 0, "best": 0.1, "best_epoch": 0})
    ours.on_train_begin()
    ours.on_epoch_end(0, {"loss": 1.0})
    assert model.stop_training is False
    assert ours.model.stop_training is False
    assert ours.wait == keras_cb.wait == 1
    ours.on_epoch_end(1, {"loss": 1.0})
    assert ours.model.stop_training is True
    assert ours.stopped_epoch == 1


def test_restore_decisions_snapshot_each_best_and_restore_at_train_end() -> None:
    ours = EarlyStopping(patience=1, restore_best_weights=True)
    result = run_distcb([ours], losses([1.0, 0.5, 0.7, 0.8]))
    kinds = [(type(d).__name__, d.at.phase, d.at.epoch) for d in result.decisions]
    snapshots = [d for d in result.decisions if isinstance(d, SnapshotWeights)]
    restore = [d for d in result.decisions if isinstance(d, RestoreWeights)]
    assert [(s.at.phase, s.at.epoch) for s in snapshots] == [("epoch_end", 0), ("epoch_end", 1)]
    assert len(restore) == 1
    assert restore[0].at.phase == "train_end"
    assert restore[0].snapshot_id == snapshots[-1].snapshot_id
    assert ("StopTraining", "epoch_end", 2) in kinds
    assert result.stopped_epoch == 2
    assert result.weights == 1.0


def test_verbose_messages(keras: Any, run_keras: Any, capsys: Any) -> None:
    kwargs = {"patience": 1, "restore_best_weights": True, "verbose": 1}
    logs = losses([1.0, 0.5, 0.7, 0.8])
    run_keras([keras.callbacks.EarlyStopping(**kwargs)], logs)
    keras_out = capsys.readouterr().out
    run_distcb([EarlyStopping(**kwargs)], logs)
    assert capsys.readouterr().out == keras_out
    assert keras_out.splitlines() == [
        "Epoch 3: early stopping",
        "Restoring model weights from the end of the best epoch: 2.",
    ]


def test_workers_disagree_aggregate_decides() -> None:
    """Rank 0 alone would keep improving; the sample-weighted mean does not, so all stop."""
    # val_loss per epoch: rank 0 [1.0, 0.9, 0.8], rank 1 [1.0, 1.2, 1.0]; val samples 100 / 300.
    epoch_logs = [
        [{"loss": 1.0, "val_loss": 1.0}, {"loss": 1.0, "val_loss": 1.0}],
        [{"loss": 0.9, "val_loss": 0.9}, {"loss": 0.9, "val_loss": 1.2}],
        [{"loss": 0.8, "val_loss": 0.8}, {"loss": 0.8, "val_loss": 1.0}],
    ]
    ours = EarlyStopping(patience=1)
    result = simulate(
        [ours],
        epoch_logs,
        params={"learning_rate": 0.01, "directions": {"loss": "min"}},
        samples=[[1000, 1000]] * 3,
        val_samples=[[100, 300]] * 3,
    )
    expected = (0.9 * 100 + 1.2 * 300) / 400  # 1.125: no improvement on 1.0
    assert result.history.history["val_loss"] == pytest.approx([1.0, expected])
    assert result.stopped_epoch == 1
    assert ours.stopped_epoch == 1
    assert ours.best == 1.0
    assert [w.epochs_run for w in result.workers] == [2, 2]
    assert [type(d) for d in result.decisions] == [StopTraining]


def test_state_round_trip_is_json() -> None:
    ours = EarlyStopping(patience=3)
    run_distcb([ours], losses([NAN, 1.0, 0.9]))
    state = json.loads(json.dumps(ours.get_state(), allow_nan=False))
    assert state == {
        "wait": 2,
        "stopped_epoch": 0,
        "best": "NaN",
        "best_epoch": 0,
        "best_weights": None,
    }
    resumed = EarlyStopping(patience=3)
    resumed.set_state({**state, "best": 0.5, "wait": 2})
    result = run_distcb([resumed], losses([0.6]))
    assert resumed.wait == 3
    assert resumed.best == 0.5
    assert result.stopped_epoch is None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": 7}, TypeError, "mode must be one of"),
        ({"monitor": 3}, TypeError, "monitor must be a metric name"),
        ({"patience": -1}, ValueError, "patience must be >= 0, received -1"),
        ({"patience": "2"}, TypeError, "patience must be an int, received '2'"),
        ({"baseline": "low"}, TypeError, "baseline must be a number"),
        ({"start_from_epoch": 1.5}, TypeError, "start_from_epoch must be an int"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        EarlyStopping(**kwargs)


def test_auto_mode_unknown_metric_says_how_to_fix() -> None:
    ours = EarlyStopping(monitor="val_wobble")
    with pytest.raises(ValueError, match="'val_wobble', which is not a metric this job reports"):
        run_distcb([ours], losses([1.0], "val_wobble"))


def test_auto_mode_name_rule_and_val_prefix() -> None:
    for monitor, directions, expected in [
        ("val_accuracy", {}, "max"),
        ("val_auc_1", {}, "max"),
        ("val_mean_squared_error", {}, "min"),
        ("val_wobble", {"wobble": "max"}, "max"),
        ("val_wobble", {"val_wobble": "min", "wobble": "max"}, "min"),
        ("val_acc", {"acc": "min"}, "min"),  # the workers' word beats the name
    ]:
        cb = EarlyStopping(monitor=monitor)
        cb.set_params({"directions": directions})
        assert cb.resolve_direction() == expected, monitor
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EarlyStopping(mode="min").resolve_direction()
