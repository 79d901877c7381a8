"""What a callback reads of a real Keras model (Keras 3 or tf_keras) that it holds itself, in a
plain single-process ``fit``: metric names and their directions, the Keras flavour, the
image layout. Nothing is set on the model here (the worker side, `distcb.keras.models`,
does that), and Keras is imported only by `channels_last`, by the name of the model's own
Keras; the rest reads attributes.

In a distcb job the coordinator's callbacks hold a proxy instead, and the workers send
these facts in their join (`distcb.keras.models` re-exports these functions for them).
"""

from __future__ import annotations

import importlib
from typing import Any

from distcb.protocol.metrics import direction_by_name

__all__ = ["channels_last", "is_keras3", "is_tf_keras", "metric_directions", "metric_names"]


def is_tf_keras(model: Any) -> bool:
    """Whether `model` is a tf_keras (Keras 2) model, else Keras 3."""
    return type(model).__module__.startswith("tf_keras")


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


def _declared_metrics(model: Any) -> list[Any]:
    """The metrics given to `compile` (names or Metric objects), flattened.

    At `on_train_begin` neither Keras 3 nor tf_keras has built its compiled
    metrics yet, so what the user declared is the only source then.
    """
    container = getattr(model, "_compile_metrics", None) or getattr(model, "compiled_metrics", None)
    declared = getattr(container, "_user_metrics", None)
    out: list[Any] = []

    def walk(item: Any) -> None:
        if isinstance(item, dict):
            for value in item.values():
                walk(value)
        elif isinstance(item, list | tuple):
            for value in item:
                walk(value)
        elif item is not None:
            out.append(item)

    walk(declared)
    return out


def _name_of(metric: Any) -> str | None:
    name = metric if isinstance(metric, str) else getattr(metric, "name", None)
    return name if isinstance(name, str) else None


def metric_names(model: Any) -> list[str]:
    names = ["loss"]
    for metric in [*_declared_metrics(model), *_compiled_metrics(model)]:
        name = _name_of(metric)
        if name and name != "compile_metrics":
            names.append(name)
    return list(dict.fromkeys(names))


def metric_directions(model: Any) -> dict[str, str]:
    """Metric name -> "min"/"max": Keras 3's declared `_direction`, else the metric's class or
    name (accuracy, AUC, precision, recall, IoU, F-scores, R² go up). Unknown: left out,
    and the coordinator's callbacks fall back to Keras 2's name rule."""
    directions = {"loss": "min"}
    for metric in [*_declared_metrics(model), *_compiled_metrics(model)]:
        name = _name_of(metric)
        if not name or name == "loss":
            continue
        direction = getattr(metric, "_direction", None)
        if direction in ("up", "down"):
            directions[name] = "max" if direction == "up" else "min"
        elif any(
            word in type(metric).__name__.lower()
            for word in ("accuracy", "auc", "precision", "recall", "iou")
        ):
            directions[name] = "max"
        elif direction_by_name(name) is not None:
            directions[name] = str(direction_by_name(name))
    return directions


def channels_last(model: Any) -> bool:
    """Whether the model's Keras (3 or tf_keras) lays images out channels last."""
    keras = importlib.import_module("tf_keras" if is_tf_keras(model) else "keras")
    return bool(keras.backend.image_data_format() == "channels_last")


def is_keras3(model: Any) -> bool:
    return not is_tf_keras(model)
