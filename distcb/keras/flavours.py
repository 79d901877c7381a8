"""What differs between Keras 3 and tf_keras, in one place."""

from __future__ import annotations

import math
import sys
from typing import Any

_CLASSES: dict[str, type] = {}

_MAX_WORDS = ("acc", "auc", "precision", "recall", "iou", "f1", "fbeta", "r2", "cosine_similarity")


def worker_class(base: type, flavour: str) -> type:
    """The WorkerCallback subclass that also derives from the flavour's Keras Callback."""
    if flavour == "auto":
        flavour = "tf_keras" if "tf_keras" in sys.modules else "keras3"
    if flavour not in ("keras3", "tf_keras"):
        raise ValueError(f"flavour must be 'auto', 'keras3' or 'tf_keras', received {flavour!r}")
    if flavour not in _CLASSES:
        if flavour == "tf_keras":
            import tf_keras

            keras_base = tf_keras.callbacks.Callback
        else:
            import keras

            keras_base = keras.callbacks.Callback
        _CLASSES[flavour] = type(base.__name__, (base, keras_base), {"_distcb_flavour": flavour})
    return _CLASSES[flavour]


def flavour_of(callback: Any) -> str:
    return str(getattr(callback, "_distcb_flavour", "keras3"))


def _is_tf_keras(model: Any) -> bool:
    return type(model).__module__.startswith("tf_keras")


def to_floats(logs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in logs.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            out[key] = value.tolist() if hasattr(value, "tolist") else value
    return out


def get_learning_rate(model: Any) -> float | None:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    try:
        if _is_tf_keras(model):
            import tf_keras

            return float(tf_keras.backend.get_value(optimizer.learning_rate))
        import keras

        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except Exception:  # a LearningRateSchedule has no single value
        return None


def set_learning_rate(model: Any, value: float) -> None:
    if _is_tf_keras(model):
        import tf_keras

        tf_keras.backend.set_value(model.optimizer.learning_rate, value)
    else:
        model.optimizer.learning_rate = value


def _compiled_metrics(model: Any) -> list[Any]:
    found = []
    for metric in getattr(model, "metrics", []) or []:
        inner = getattr(metric, "metrics", None)
        if isinstance(inner, list) and type(metric).__name__ in (
            "CompileMetrics",
            "MetricsList",
            "MetricsContainer",
        ):
            found.extend(inner)
        else:
            found.append(metric)
    return found


def metric_names(model: Any) -> list[str]:
    names = getattr(model, "metrics_names", None)
    if names:
        flat = []
        for name in names:
            flat.append(name)
        if "compile_metrics" in flat:
            flat = [n for n in flat if n != "compile_metrics"] + [
                m.name for m in _compiled_metrics(model) if m.name != "loss"
            ]
        return list(dict.fromkeys(flat))
    return [m.name for m in _compiled_metrics(model)]


def metric_directions(model: Any) -> dict[str, str]:
    """Metric name -> "min"/"max", from the compiled metrics (Keras 3's `_direction`)."""
    directions = {"loss": "min"}
    for metric in _compiled_metrics(model):
        name = getattr(metric, "name", None)
        if not isinstance(name, str):
            continue
        direction = getattr(metric, "_direction", None)
        if direction in ("up", "down"):
            directions[name] = "max" if direction == "up" else "min"
        elif any(
            word in type(metric).__name__.lower()
            for word in ("accuracy", "auc", "precision", "recall", "iou")
        ) or name != "loss" and any(word in name.lower() for word in _MAX_WORDS):
            directions[name] = "max"
    return directions


def named_weights(model: Any) -> dict[str, Any]:
    out = {}
    for index, variable in enumerate(model.weights):
        name = getattr(variable, "path", None) or getattr(variable, "name", f"weight_{index}")
        out[str(name).replace(":0", "")] = variable.numpy()
    return out


def is_finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True
