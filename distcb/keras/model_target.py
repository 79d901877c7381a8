"""A Keras model as the target of decisions (`distcb.worker.apply.DecisionTarget`)."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from distcb.keras import models as keras_models
from distcb.keras import training_state
from distcb.worker.apply import LiveState

TEMP_PREFIX = ".distcb-"


class KerasModelTarget:
    """Carries decisions out on one worker's Keras 3 or tf_keras model.

    Saves are atomic: Keras writes a temporary file of the same suffix in the
    target directory, which then replaces the target (`os.replace`). Temporary
    files a killed save left behind are removed at the next save: the chief is
    the only writer of these files, so any that exists then is stale.

    Backups hold everything training goes on from. Keras 3: every variable of the model
    (with the seed generators' states: dropout masks continue exactly) and of its
    optimizer (moments, iteration count, learning rate), captured in memory at the
    barrier and written off the training thread (`distcb.keras.training_state`).
    tf_keras: its TensorFlow checkpoint (`save_weights` in the TF format also tracks the
    optimizer), written from the live model while training waits.
    """

    snapshot_suffix = ".npz"

    def __init__(self, model: Any):
        self.model = model

    def stop_training(self) -> None:
        self.model.stop_training = True

    def set_learning_rate(self, value: float) -> None:
        keras_models.set_learning_rate(self.model, value)

    def get_weights(self) -> list[Any]:
        return [w.copy() for w in self.model.get_weights()]

    def set_weights(self, weights: Any) -> None:
        self.model.set_weights(weights)

    def save(
        self,
        filepath: str,
        *,
        weights_only: bool,
        overwrite: bool,
        before_replace: Callable[[str], None] | None = None,
    ) -> None:
        if not overwrite and os.path.exists(filepath):
            return
        directory = os.path.dirname(filepath) or "."
        os.makedirs(directory, exist_ok=True)
        remove_stale_temporaries(directory)
        suffix = (
            ".weights.h5" if filepath.endswith(".weights.h5") else os.path.splitext(filepath)[1]
        )
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=suffix, dir=directory)
        os.close(fd)
        os.unlink(tmp)  # Keras refuses to overwrite some formats silently: let it create it
        try:
            with keras_models.writing_alone(self.model):
                if weights_only:
                    self.model.save_weights(tmp)
                else:
                    self.model.save(tmp)
            if before_replace is not None:
                before_replace(tmp)
            os.replace(tmp, filepath)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def capture_state(self) -> training_state.CapturedKerasState | LiveState:
        if keras_models.is_tf_keras(self.model):
            # tf_keras's checkpoint is written from the live variables (optimizer slots
            # restore lazily through it): written while training waits.
            return LiveState(self.save_state)
        with keras_models.writing_alone(self.model):
            return training_state.capture(self.model)

    def save_state(self, directory: str) -> None:
        with keras_models.writing_alone(self.model):
            keras_models.save_training_state(self.model, directory)

    def load_state(self, directory: str) -> None:
        if os.path.exists(os.path.join(directory, training_state.STATE_FILE)):
            with keras_models.writing_alone(self.model):
                training_state.load(self.model, directory)
        else:  # a backup in Keras's own formats (tf_keras; distcb before issue 24)
            keras_models.load_training_state(self.model, directory)

    def save_snapshot(self, weights: Any, path: str) -> None:
        with open(path, "wb") as handle:
            np.savez(handle, *weights)

    def load_snapshot(self, path: str) -> Any:
        with np.load(path) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]


def remove_stale_temporaries_under(root: str) -> list[str]:
    """`remove_stale_temporaries` in `root` and every directory below it (a launcher does
    this in the run directory before its workers start: no save of this job runs yet)."""
    removed = []
    for directory, _, files in os.walk(root):
        if any(name.startswith(TEMP_PREFIX) for name in files):
            removed += remove_stale_temporaries(directory)
    return removed


def remove_stale_temporaries(directory: str) -> list[str]:
    """Remove the temporary files of saves that never finished in `directory`."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(directory), TEMP_PREFIX + "*")):
        with contextlib.suppress(OSError):
            if os.path.isdir(path):
                continue
            os.unlink(path)
            removed.append(path)
    return removed
