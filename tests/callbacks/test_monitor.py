"""What EarlyStopping, ReduceLROnPlateau and ModelCheckpoint share with Keras's MonitorCallback:
the `mode` argument, `monitor_op`, and the direction of a metric in a plain fit."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from distcb.callbacks import EarlyStopping, ModelCheckpoint, ReduceLROnPlateau

MONITORS = {
    "EarlyStopping": lambda m, **kw: m.EarlyStopping(**kw),
    "ReduceLROnPlateau": lambda m, **kw: m.ReduceLROnPlateau(**kw),
    "ModelCheckpoint": lambda m, **kw: m.ModelCheckpoint("unused.keras", **kw),
}


@pytest.mark.parametrize("name", sorted(MONITORS))
def test_unknown_mode_warns_and_falls_back_to_auto_like_keras(name: str, keras: Any) -> None:
    import distcb.callbacks as ours

    results = []
    for module in (keras.callbacks, ours):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            callback = MONITORS[name](module, mode="unknown")
        (warning,) = [w for w in caught if issubclass(w.category, UserWarning)]
        results.append((callback.mode, f"{name} mode 'unknown' is unknown" in str(warning.message)))
    assert results[1] == results[0] == ("auto", True)
    with pytest.raises(TypeError, match="mode must be one of"):
        MONITORS[name](ours, mode=["min"])


def test_monitor_op_is_what_keras_exposes(keras: Any, keras_model: Any) -> None:
    model = keras_model(metrics=["accuracy"])
    model.fit(np.ones((4, 2)), np.ones((4, 1)), verbose=0)  # Keras reads the built metrics
    for monitor, op in (("val_loss", keras.ops.less), ("accuracy", keras.ops.greater)):
        theirs, ours = keras.callbacks.EarlyStopping(monitor), EarlyStopping(monitor)
        assert ours.monitor_op is None  # as Keras: not resolved before training
        for callback in (theirs, ours):
            callback.set_model(model)
            callback.on_train_begin()
        theirs.on_epoch_end(0, {monitor: 1.0})  # Keras resolves it at the first epoch end
        assert ours.monitor_op is theirs.monitor_op is op


def test_monitor_op_with_tf_keras_or_on_the_coordinator_is_numpy() -> None:
    tf_keras = pytest.importorskip("tf_keras")
    model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_dim=2)])
    model.compile("sgd", "mse", metrics=["acc"])
    stopper = EarlyStopping("val_acc")
    stopper.set_model(model)
    stopper.on_train_begin()
    assert stopper.monitor_op is np.greater  # what tf_keras's EarlyStopping holds
    coordinator = ReduceLROnPlateau("val_loss")
    coordinator.resolve_direction()
    assert coordinator.monitor_op is np.less


def test_assigning_monitor_op_sets_the_direction() -> None:
    checkpoint = ModelCheckpoint("unused.keras", monitor="val_wobble", save_best_only=True)
    checkpoint.monitor_op = np.greater
    assert checkpoint.resolve_direction() == "max"
    with pytest.raises(TypeError, match="monitor_op must be a less or greater comparison"):
        checkpoint.monitor_op = np.equal


def test_a_declared_metric_direction_decides_auto_in_plain_fit(keras: Any) -> None:
    """Only Keras 3's declared direction tells that PearsonCorrelation goes up."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse", metrics=[keras.metrics.PearsonCorrelation()])
    x = np.random.default_rng(0).normal(size=(16, 2))
    theirs = keras.callbacks.EarlyStopping("val_pearson_correlation")
    ours = EarlyStopping("val_pearson_correlation")
    model.fit(
        x, x[:, :1], validation_data=(x, x[:, :1]), epochs=1, verbose=0, callbacks=[theirs, ours]
    )
    assert ours.monitor_op is theirs.monitor_op is keras.ops.greater
    with pytest.raises(ValueError, match="cannot tell whether it should be minimized"):
        EarlyStopping("val_pearson_correlation").resolve_direction()  # no model, no name rule


REPORTED = {"directions": {"loss": "min", "accuracy": "max"}, "metrics": ["loss", "accuracy"]}
TYPO_LOGS = {"loss": 0.5, "accuracy": 0.7, "val_loss": 0.6, "val_accuracy": 0.6}
UNREPORTED = "which is not a metric this job reports"


@pytest.mark.parametrize("name", sorted(MONITORS))
def test_a_misspelled_monitor_in_auto_mode_says_it_is_not_reported(name: str) -> None:
    import distcb.callbacks as ours

    extra = {"save_best_only": True} if name == "ModelCheckpoint" else {}
    callback = MONITORS[name](ours, monitor="val_los", **extra)
    callback.set_params(dict(REPORTED))
    with pytest.raises(ValueError, match=UNREPORTED) as info:
        callback.resolve_direction()  # on_train_begin's first step, as in Keras
    text = str(info.value)
    assert f"{name} monitors 'val_los', {UNREPORTED}" in text
    assert "Reported: accuracy, loss, val_accuracy, val_loss." in text
    assert "Did you mean monitor='val_loss'?" in text
    assert "mode='min'" not in text  # a mode would only hide the typo


@pytest.mark.parametrize("name", ["EarlyStopping", "ReduceLROnPlateau"])
def test_a_misspelled_monitor_with_a_mode_warns_with_the_closest_name(name: str) -> None:
    import distcb.callbacks as ours
    from distcb.testing import simulate

    callback = MONITORS[name](ours, monitor="val_acuracy", mode="max")
    logs = [[dict(TYPO_LOGS), dict(TYPO_LOGS)] for _ in range(2)]
    with pytest.warns(UserWarning, match="so this epoch is skipped") as caught:
        simulate([callback], epoch_logs=logs, params=dict(REPORTED, learning_rate=0.1))
    texts = [str(w.message) for w in caught]
    assert any("Did you mean monitor='val_accuracy'?" in t for t in texts), texts


def test_save_best_only_on_an_unreported_metric_warns_that_it_saves_every_time() -> None:
    from distcb.testing import simulate

    logs = [[dict(TYPO_LOGS), dict(TYPO_LOGS)] for _ in range(3)]
    checkpoint = ModelCheckpoint(
        "m-{epoch}.keras", monitor="val_los", save_best_only=True, mode="min"
    )
    with pytest.warns(UserWarning, match="saving anyway, every time") as caught:
        result = simulate([checkpoint], epoch_logs=logs, params=dict(REPORTED))
    texts = [str(w.message) for w in caught]
    assert any("Did you mean monitor='val_loss'?" in t for t in texts), texts
    assert len(result.decisions) == 3  # Keras's behaviour kept: it saves, but says so


def test_a_name_that_is_reported_but_has_no_known_direction_still_asks_for_a_mode() -> None:
    callback = EarlyStopping(monitor="val_custom")
    callback.set_params({"directions": {"loss": "min"}, "metrics": ["loss", "custom"]})
    with pytest.raises(ValueError, match="Pass mode='min'"):
        callback.on_train_begin()
