"""What distcb reads of (and sets on) a real Keras model, Keras 3 or tf_keras, in one place.

Used by the callbacks in a plain single-process `fit` (where they hold the real
model) and by the worker glue (`distcb.keras`). Keras itself is imported only
inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from distcb.protocol.metrics import direction_by_name


def _is_tf_keras(model: Any) -> bool:
    return type(model).__module__.startswith("tf_keras")


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


def named_weights(model: Any) -> dict[str, Any]:
    out = {}
    for index, variable in enumerate(model.weights):
        name = getattr(variable, "path", None) or getattr(variable, "name", f"weight_{index}")
        out[str(name).replace(":0", "")] = variable.numpy()
    return out


def iterations(model: Any) -> int | None:
    """The optimizer's step count (``optimizer.iterations``), or None without one."""
    variable = getattr(getattr(model, "optimizer", None), "iterations", None)
    if variable is None:
        return None
    try:
        if _is_tf_keras(model):
            import tf_keras

            return int(tf_keras.backend.get_value(variable))
        import keras

        return int(keras.ops.convert_to_numpy(variable))
    except Exception:
        return None


def channels_last(model: Any) -> bool:
    """Whether the model's Keras (3 or tf_keras) lays images out channels last."""
    import importlib

    keras = importlib.import_module("tf_keras" if _is_tf_keras(model) else "keras")
    return bool(keras.backend.image_data_format() == "channels_last")


def is_keras3(model: Any) -> bool:
    return not _is_tf_keras(model)


def is_synchronous(model: Any) -> bool:
    """Whether the workers train one model together (MultiWorkerMirroredStrategy, or Keras 3
    on JAX with a ``keras.distribution`` over several processes): then the chief alone
    holds the weights to back up, and every worker restores its backup."""
    strategy = getattr(model, "distribute_strategy", None)
    name = type(strategy).__name__ if strategy is not None else ""
    if "MultiWorkerMirrored" in name or "CollectiveAllReduce" in name:
        return True
    return not _is_tf_keras(model) and _jax_distribution_spans_processes()


@contextlib.contextmanager
def writing_alone(model: Any) -> Iterator[None]:
    """Around a save that one process makes alone (the chief's model files and backups).

    Keras 3's saving creates Keras variables of its own (3.15's ``saving_lib`` builds a
    reference optimizer); under a ``keras.distribution`` that spans processes, creating a
    variable is a collective on JAX (``device_put`` checks that every process passes the
    same value), which the processes that do not save never join: the save would fail,
    or pair with another collective of theirs. So the save runs with the distribution
    unset; Keras keeps it per thread, and decisions are applied on the training thread,
    so training's own setting is back before its next step. The weights it writes are
    read from this process's replica, which holds all of them under ``DataParallel``.
    """
    if _is_tf_keras(model) or not _jax_distribution_spans_processes():
        yield
        return
    import keras

    distribution = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


def _jax_distribution_spans_processes() -> bool:
    if "jax" not in sys.modules or "keras" not in sys.modules:
        return False  # neither is imported here by a worker on another route
    import jax
    import keras

    if keras.backend.backend() != "jax" or keras.distribution.distribution() is None:
        return False
    return bool(jax.process_count() > 1)


def save_training_state(model: Any, directory: str) -> None:
    """Model and optimizer state, in Keras's own format, into `directory` (see
    `load_training_state`)."""
    if _is_tf_keras(model):
        # The TF-format checkpoint of save_weights tracks the optimizer too.
        model.save_weights(os.path.join(directory, "checkpoint"), save_format="tf")
        return
    model.save_weights(os.path.join(directory, "model.weights.h5"))
    # Keras 3's weights file leaves the seed generators' states out (dropout and other
    # seeded layers): without them a resumed run would draw other random numbers.
    generators = [v for v in model.variables if "seed_generator_state" in v.path]
    with open(os.path.join(directory, "seed_generators.npz"), "wb") as handle:
        np.savez(handle, *[np.asarray(v.numpy()) for v in generators])


def load_training_state(model: Any, directory: str) -> None:
    """Set model and optimizer state back to what `save_training_state` wrote."""
    if _is_tf_keras(model):
        model.load_weights(os.path.join(directory, "checkpoint"))
        return
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)  # its variables exist before they load
    model.load_weights(os.path.join(directory, "model.weights.h5"))
    generators = [v for v in model.variables if "seed_generator_state" in v.path]
    with np.load(os.path.join(directory, "seed_generators.npz")) as data:
        if len(data.files) != len(generators):
            raise ValueError(
                f"the backup in {directory} holds {len(data.files)} seed generator states, "
                f"the model has {len(generators)}: is it the same model?"
            )
        for index, variable in enumerate(generators):
            variable.assign(data[f"arr_{index}"])


def seed_everything(seed: int, epoch: int) -> None:
    """Seed Python's, NumPy's and the framework's global generators from (seed, epoch)."""
    value = (seed * 1_000_003 + epoch) % (2**31)
    if "tf_keras" in sys.modules and "keras" not in sys.modules:
        import tf_keras

        tf_keras.utils.set_random_seed(value)
    else:
        import keras

        keras.utils.set_random_seed(value)


def resume_at_epoch(model: Any, epoch: int) -> None:
    """Make the `fit` that is starting begin at `epoch` (a resumed job).

    Keras 3 reads ``model._initial_epoch`` after ``on_train_begin`` (what its own
    BackupAndRestore sets); tf_keras asks ``model._training_state`` (what its own
    BackupAndRestore installs) for the epoch to begin at.
    """
    if _is_tf_keras(model):
        model._training_state = _ResumeAt(epoch)
    else:
        model._initial_epoch = epoch


def end_resume(model: Any) -> None:
    """Undo `resume_at_epoch` once the fit has begun (a later fit starts as asked)."""
    if _is_tf_keras(model):
        if isinstance(getattr(model, "_training_state", None), _ResumeAt):
            model._training_state = None
    elif hasattr(model, "_initial_epoch"):
        model._initial_epoch = None


class _ResumeAt:
    """What tf_keras's fit asks for the epoch and step to begin at."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def maybe_load_initial_counters_from_ckpt(
        self, steps_per_epoch: Any, initial_epoch: int, mode: Any = None
    ) -> tuple[int, int]:
        return self.epoch, 0
