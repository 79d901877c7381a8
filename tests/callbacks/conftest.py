"""Fixtures: drive real Keras 3 callbacks the way `fit` does, with synthetic logs."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

from tests.helpers.keras_run import KerasRun  # noqa: E402


@pytest.fixture(scope="session")
def keras() -> Any:
    import keras

    return keras


@pytest.fixture(scope="session")
def np() -> Any:
    import numpy

    return numpy


@pytest.fixture
def keras_model(keras: Any) -> Callable[..., Any]:
    def build(learning_rate: float = 0.01, metrics: Sequence[str] = ()) -> Any:
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate), loss="mse", metrics=list(metrics)
        )
        return model

    return build


@pytest.fixture
def run_keras(keras: Any, np: Any, keras_model: Callable[..., Any]) -> Callable[..., KerasRun]:
    """Run real keras.callbacks through Keras 3's fit loop order with scripted logs.

    Loop (keras/src/backend/tensorflow/trainer.py): on_train_begin; per epoch
    on_epoch_begin, per step on_train_batch_begin/_end then `if stop_training: break`,
    on_epoch_end, `if stop_training: break`; on_train_end with the last epoch's logs.
    Before each epoch end, every weight is set to the epoch number, so the final
    weights tell which epoch's weights the model ends with.
    """

    def run(
        callbacks: Sequence[Any],
        epoch_logs: Sequence[dict[str, Any]],
        batch_logs: Sequence[Sequence[dict[str, Any]]] | None = None,
        *,
        learning_rate: float = 0.01,
        model: Any = None,
    ) -> KerasRun:
        model = model if model is not None else keras_model(learning_rate)
        steps = max((len(b) for b in batch_logs), default=0) if batch_logs else 1
        for callback in callbacks:
            callback.set_model(model)
            callback.set_params({"epochs": len(epoch_logs), "steps": steps, "verbose": 0})
        model.stop_training = False
        for callback in callbacks:
            callback.on_train_begin(None)
        learning_rates: list[float] = []
        seen: list[dict[str, Any]] = []
        logs: dict[str, Any] = {}
        stopped = None
        for epoch, scripted in enumerate(epoch_logs):
            for callback in callbacks:
                callback.on_epoch_begin(epoch, None)
            learning_rates.append(float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)))
            for step, batch in enumerate(batch_logs[epoch] if batch_logs else []):
                for callback in callbacks:
                    callback.on_train_batch_begin(step, None)
                for callback in callbacks:
                    callback.on_train_batch_end(step, dict(batch))
                if model.stop_training:
                    break
            model.set_weights([np.full(w.shape, float(epoch)) for w in model.get_weights()])
            logs = dict(scripted)
            for callback in callbacks:
                callback.on_epoch_end(epoch, logs)
            seen.append(logs)
            if model.stop_training:
                stopped = epoch
                break
        for callback in callbacks:
            callback.on_train_end(logs)
        return KerasRun(
            epochs_run=len(seen),
            stopped_epoch=stopped,
            learning_rates=learning_rates,
            weights=float(model.get_weights()[0].flat[0]),
            epoch_logs=seen,
            final_learning_rate=float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
        )

    return run


def pytest_configure(config: pytest.Config) -> None:
    # Keras 3's ops on Python floats (EarlyStopping's ops.less) warn under numpy 2.
    config.addinivalue_line("filterwarnings", "ignore:__array__ implementation:DeprecationWarning")
