"""What a worker tells the coordinator about its model, read from real Keras 3 and tf_keras models
at the moment WorkerCallback joins (on_train_begin: compiled metrics not built yet)."""

from __future__ import annotations

import pytest

from distcb.keras import models as keras_models


def test_keras3_directions_come_from_the_declared_metrics():
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(
        "adam",
        "binary_crossentropy",
        metrics=[
            "accuracy",
            keras.metrics.AUC(),
            keras.metrics.MeanSquaredError(),
            keras.metrics.PearsonCorrelation(),
        ],
    )
    assert keras_models.metric_names(model) == [
        "loss",
        "accuracy",
        "auc",
        "mean_squared_error",
        "pearson_correlation",
    ]
    assert keras_models.metric_directions(model) == {
        "loss": "min",
        "accuracy": "max",
        "auc": "max",
        "mean_squared_error": "min",
        # Only Keras 3's declared direction says so; no name rule would.
        "pearson_correlation": "max",
    }
    assert keras_models.get_learning_rate(model) == pytest.approx(0.001)
    keras_models.set_learning_rate(model, 0.5)
    assert keras_models.get_learning_rate(model) == pytest.approx(0.5)


def test_tf_keras_names_directions_and_learning_rate():
    tf_keras = pytest.importorskip("tf_keras")
    model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_dim=2, activation="sigmoid")])
    model.compile(
        tf_keras.optimizers.SGD(0.1), "binary_crossentropy", metrics=["acc", tf_keras.metrics.AUC()]
    )
    assert keras_models.metric_names(model) == ["loss", "acc", "auc"]
    assert keras_models.metric_directions(model) == {"loss": "min", "acc": "max", "auc": "max"}
    assert keras_models.get_learning_rate(model) == pytest.approx(0.1)
    keras_models.set_learning_rate(model, 0.25)
    assert keras_models.get_learning_rate(model) == pytest.approx(0.25)
