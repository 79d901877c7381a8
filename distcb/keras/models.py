"""What the worker glue reads of and sets on a real Keras model, Keras 3 or tf_keras: the
learning rate, the optimizer's step count, weights, backups, resuming, seeding.

What a callback also reads of a model it holds in a plain ``fit`` (metric names and
directions, the flavour, the image layout) lives below, in `distcb.callbacks.local_model`,
and is re-exported here so that the worker glue reads a model through one module. Keras
itself is imported only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from distcb.callbacks.local_model import (
    channels_last,
    is_keras3,
    is_tf_keras,
    metric_directions,
    metric_names,
)

__all__ = [
    "channels_last",
    "end_resume",
    "get_learning_rate",
    "is_keras3",
    "is_synchronous",
    "iterations",
    "load_training_state",
    "metric_directions",
    "metric_names",
    "named_weights",
    "resume_at_epoch",
    "save_training_state",
    "seed_everything",
    "set_learning_rate",
    "writing_alone",
]


def get_learning_rate(model: Any) -> float | None:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    try:
        if is_tf_keras(model):
            import tf_keras

            return float(tf_keras.backend.get_value(optimizer.learning_rate))
        import keras

        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except Exception:  # a LearningRateSchedule has no single value
        return None


def set_learning_rate(model: Any, value: float) -> None:
    if is_tf_keras(model):
        import tf_keras

        tf_keras.backend.set_value(model.optimizer.learning_rate, value)
    else:
        model.optimizer.learning_rate = value


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
        if is_tf_keras(model):
            import tf_keras

            return int(tf_keras.backend.get_value(variable))
        import keras

        return int(keras.ops.convert_to_numpy(variable))
    except Exception:
        return None


def is_synchronous(model: Any) -> bool:
    """Whether the workers train one model together (MultiWorkerMirroredStrategy, or Keras 3
    on JAX with a ``keras.distribution`` over several processes): then the chief alone
    holds the weights to back up, and every worker restores its backup."""
    strategy = getattr(model, "distribute_strategy", None)
    name = type(strategy).__name__ if strategy is not None else ""
    if "MultiWorkerMirrored" in name or "CollectiveAllReduce" in name:
        return True
    return not is_tf_keras(model) and _jax_distribution_spans_processes()


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
    if is_tf_keras(model) or not _jax_distribution_spans_processes():
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
    if is_tf_keras(model):
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
    if is_tf_keras(model):
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
    if is_tf_keras(model):
        model._training_state = _ResumeAt(epoch)
    else:
        model._initial_epoch = epoch


def end_resume(model: Any) -> None:
    """Undo `resume_at_epoch` once the fit has begun (a later fit starts as asked)."""
    if is_tf_keras(model):
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
