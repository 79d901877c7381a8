"""ModelCheckpoint: the chief worker saves the model when the coordinator says so."""

from __future__ import annotations

import os
import warnings
from typing import Any

from distcb.callbacks.base import Logs
from distcb.callbacks.io_utils import print_msg
from distcb.callbacks.monitor import (
    MonitorCallback,
    check_int,
    check_number,
    decode_float,
    encode_float,
    not_reported,
)


class ModelCheckpoint(MonitorCallback):
    """Save the model (or its weights) at some frequency, as ``keras.callbacks.ModelCheckpoint``.

    Each save becomes a decision that the chief worker alone carries out,
    atomically, so that no two processes ever write the same file. `filepath` is
    formatted with ``epoch`` (1-based), the aggregated logs and, for batch saves,
    ``batch`` (1-based); missing directories are created by the coordinator.

    Args:
        filepath: where to save; ends in ``.keras`` or ``.h5``, or in ``.weights.h5``
            with `save_weights_only`.
        monitor: the metric `save_best_only` compares.
        verbose: 1 prints each save.
        save_best_only: save only when `monitor` improves on the best so far
            (a missing monitor warns and saves, as Keras 3 does).
        save_weights_only: save only the weights.
        mode: "auto", "min" or "max".
        save_freq: "epoch", or an int N to save every N training batches.
        initial_value_threshold: the best value to beat at first.
        period: Keras 2's "every N epochs" (with ``save_freq="epoch"``).

    Raises:
        ValueError: a filepath suffix that does not fit `save_weights_only`, or a bad
            `save_freq`, `period` or `mode`.
    """

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
        period: int | None = None,
    ):
        super().__init__(monitor, mode)
        owner = "ModelCheckpoint"
        path = os.fspath(filepath) if isinstance(filepath, str | os.PathLike) else filepath
        if not isinstance(path, str):
            raise TypeError(
                f"{owner} filepath must be a str or os.PathLike, received {filepath!r}."
            )
        self.filepath = path
        self.verbose = check_int(verbose, "verbose", owner)
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        if save_freq != "epoch" and (
            isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1
        ):
            raise ValueError(
                f"Unrecognized save_freq: {save_freq!r}. Expected 'epoch' or a positive int "
                "(save every that many batches)."
            )
        self.save_freq = save_freq
        if period is not None:
            period = check_int(period, "period", owner, minimum=1)
            if save_freq != "epoch":
                raise ValueError(
                    f"{owner}: period={period} (Keras 2: save every N epochs) needs "
                    f"save_freq='epoch', received save_freq={save_freq!r}. Pass one of them."
                )
        self.period = 1 if period is None else period
        if initial_value_threshold is not None:
            self.best = check_number(initial_value_threshold, "initial_value_threshold", owner)
        if self.save_weights_only:
            if not self.filepath.endswith(".weights.h5"):
                raise ValueError(
                    "When using save_weights_only=True in ModelCheckpoint, the filepath must "
                    f"end in `.weights.h5` (Keras weights format). Received: filepath={path}"
                )
        elif not self.filepath.endswith((".keras", ".h5")):
            raise ValueError(
                "The ModelCheckpoint filepath must end in `.keras` (Keras model format) or "
                f"`.h5`, or pass save_weights_only=True with `.weights.h5`. Received: "
                f"filepath={path}"
            )
        # Only a batch-frequency checkpoint decides on batch ends.
        self.decides_on_batch = self.save_freq != "epoch"
        self.epochs_since_last_save = 0
        self._batches_seen_since_last_saving = 0
        self._last_batch_seen: int | None = None
        self._current_epoch = 0
        self.saved: list[str] = []  # paths saved, in order

    def implements_batch_hooks(self) -> bool:
        """Batch hooks matter only when they can act (see CallbackList)."""
        return bool(self.decides_on_batch)

    def statistics(self) -> dict[str, Any]:
        """Saves made (in a job: asked of the chief, which writes them), and the last path."""
        return {"saves": len(self.saved), "last": self.saved[-1] if self.saved else None}

    def on_train_begin(self, logs: Logs | None = None) -> None:
        if self.save_best_only:
            self.resolve_direction()

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self._current_epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        if self._should_save_on_batch(batch):
            self._save_model(self._current_epoch, batch, logs)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        self.epochs_since_last_save += 1
        if self.save_freq == "epoch" and self.epochs_since_last_save >= self.period:
            self.epochs_since_last_save = 0
            self._save_model(epoch, None, logs)

    def _should_save_on_batch(self, batch: int) -> bool:
        if self.save_freq == "epoch":
            return False
        if self._last_batch_seen is None or batch <= self._last_batch_seen:
            added = batch + 1  # a new epoch began
        else:
            added = batch - self._last_batch_seen
        self._batches_seen_since_last_saving += added
        self._last_batch_seen = batch
        if self._batches_seen_since_last_saving >= int(self.save_freq):
            self._batches_seen_since_last_saving = 0
            return True
        return False

    def _should_save(self, epoch: int, logs: Logs, filepath: str) -> bool:
        if not self.save_best_only:
            if self.verbose > 0:
                print_msg(f"\nEpoch {epoch + 1}: saving model to {filepath}")
            return True
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(
                f"Can save best model only with {self.monitor} available; saving anyway, every "
                f"time. {not_reported(self.monitor, logs, 'ModelCheckpoint(save_best_only=True)')}",
                stacklevel=3,
            )
            return True
        try:
            value = float(current)
        except (TypeError, ValueError):
            warnings.warn(
                f"Can save best model only when `{self.monitor}` is a scalar value. Received: "
                f"{current!r}. Falling back to save_best_only=False.",
                stacklevel=3,
            )
            return True
        best = "None" if self.best is None else f"{self.best:.5f}"
        if self._is_improvement(value, self.best):
            if self.verbose > 0:
                print_msg(
                    f"\nEpoch {epoch + 1}: {self.monitor} improved from {best} to {value:.5f}, "
                    f"saving model to {filepath}"
                )
            self.best = value
            return True
        if self.verbose > 0:
            print_msg(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {best}")
        return False

    def _file_path(self, epoch: int, batch: int | None, logs: Logs) -> str:
        try:
            if batch is None or "batch" in logs:
                return self.filepath.format(epoch=epoch + 1, **logs)
            return self.filepath.format(epoch=epoch + 1, batch=batch + 1, **logs)
        except (KeyError, IndexError) as exc:
            raise KeyError(
                f'Failed to format this callback filepath: "{self.filepath}". Reason: {exc!r} is '
                f"not among the placeholders available: epoch"
                f"{'' if batch is None else ', batch'}, {', '.join(logs) or '(no logs)'}."
            ) from exc

    def _save_model(self, epoch: int, batch: int | None, logs: Logs | None) -> None:
        logs = dict(logs or {})
        filepath = self._file_path(epoch, batch, logs)
        if not self._should_save(epoch, logs, filepath):
            return
        if os.path.isdir(filepath):
            raise IsADirectoryError(
                "Please specify a non-directory filepath for ModelCheckpoint. Filepath used is "
                f"an existing directory: {filepath}"
            )
        dirname = os.path.dirname(filepath)
        if dirname:
            os.makedirs(dirname, exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(filepath, overwrite=True)
        else:
            self.model.save(filepath, overwrite=True)
        self.saved.append(filepath)

    def get_state(self) -> dict[str, Any]:
        """Best value, frequency counters and saved paths, JSON-compatible."""
        return {
            "best": encode_float(self.best),
            "epochs_since_last_save": self.epochs_since_last_save,
            "batches_seen_since_last_saving": self._batches_seen_since_last_saving,
            "last_batch_seen": self._last_batch_seen,
            "current_epoch": self._current_epoch,
            "saved": list(self.saved),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.best = decode_float(state["best"])
        self.epochs_since_last_save = int(state.get("epochs_since_last_save", 0))
        self._batches_seen_since_last_saving = int(state.get("batches_seen_since_last_saving", 0))
        last = state.get("last_batch_seen")
        self._last_batch_seen = None if last is None else int(last)
        self._current_epoch = int(state.get("current_epoch", 0))
        self.saved = list(state.get("saved", []))
