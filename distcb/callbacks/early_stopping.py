"""EarlyStopping: stop every worker when the aggregated metric stops improving."""

from __future__ import annotations

from typing import Any

from distcb.callbacks.base import Logs
from distcb.callbacks.io_utils import print_msg
from distcb.callbacks.monitor import (
    MonitorCallback,
    check_int,
    check_number,
    decode_float,
    encode_float,
)


class EarlyStopping(MonitorCallback):
    """Stop training when `monitor`, aggregated over all workers, has stopped improving.

    Same arguments and semantics as ``keras.callbacks.EarlyStopping`` (Keras 3):
    ``wait`` counts up before the improvement test; an improvement resets it only
    when there is no `baseline` or the value also beats the baseline; training
    stops once ``wait >= patience`` (never at epoch 0); `start_from_epoch` skips
    the first epochs; a missing monitor warns and skips the epoch. With
    `restore_best_weights`, every worker restores the weights of the best epoch at
    the end of training, whether this callback stopped it or not.

    The best weights are kept by the workers: ``best_weights`` holds a handle.

    Args:
        monitor: the metric to watch.
        min_delta: an improvement must be larger than ``abs(min_delta)``.
        patience: epochs without improvement before stopping.
        verbose: 1 prints when stopping and restoring.
        mode: "auto", "min" or "max".
        baseline: a value the metric must beat for `wait` to reset.
        restore_best_weights: restore the best epoch's weights when training ends.
        start_from_epoch: epochs to let pass before watching.
    """

    decides_on_batch = False

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ):
        super().__init__(monitor, mode, min_delta)
        owner = "EarlyStopping"
        self.patience = check_int(patience, "patience", owner)
        self.verbose = check_int(verbose, "verbose", owner)
        self.baseline = None if baseline is None else check_number(baseline, "baseline", owner)
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = check_int(start_from_epoch, "start_from_epoch", owner)
        self.wait = 0
        self.stopped_epoch = 0
        self.best_epoch = 0
        self.best_weights: Any = None
        self._resumed = False

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self.resolve_direction()
        if self._resumed:  # set_state() before training: keep the restored counters
            self._resumed = False
            return
        self.wait = 0
        self.stopped_epoch = 0
        self.best = None
        self.best_weights = None
        self.best_epoch = 0

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        self.resolve_direction()
        current = self._monitor_value(logs, "Early stopping")
        if current is None or epoch < self.start_from_epoch:
            return
        improved = self._is_improvement(current, self.best)
        if self.restore_best_weights and self.best_weights is None and not improved:
            # No weights kept yet (a resumed run): until something improves, these are the best.
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if improved:
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: Logs | None = None) -> None:
        if self.stopped_epoch > 0 and self.verbose > 0:
            print_msg(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print_msg(
                    "Restoring model weights from the end of the best epoch: "
                    f"{self.best_epoch + 1}."
                )
            self.model.set_weights(self.best_weights)

    def get_state(self) -> dict[str, Any]:
        """The counters, JSON-compatible; the best weights stay with the workers: the state
        names their snapshot (a distcb job keeps it on disk when it journals)."""
        return {
            "wait": self.wait,
            "stopped_epoch": self.stopped_epoch,
            "best": encode_float(self.best),
            "best_epoch": self.best_epoch,
            "best_weights": getattr(self.best_weights, "snapshot_id", None),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Resume from `get_state()`; the next `on_train_begin` keeps these values."""
        self.wait = int(state["wait"])
        self.stopped_epoch = int(state["stopped_epoch"])
        self.best = decode_float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        snapshot_id = state.get("best_weights")
        holder = getattr(self.model, "weights_snapshot", None)
        # The handle comes back when the model can rebuild it (a resumed distcb job).
        self.best_weights = (
            holder(int(snapshot_id)) if snapshot_id is not None and callable(holder) else None
        )
        self._resumed = True
