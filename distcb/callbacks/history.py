"""History: every epoch's aggregated logs; `distcb.run` returns it."""

from __future__ import annotations

from typing import Any

from distcb.callbacks.base import Callback, Logs


class History(Callback):
    """Records the aggregated logs of every epoch, like ``keras.callbacks.History``.

    Attributes:
        epoch: the epochs run (0-based).
        history: metric name -> list of per-epoch values.
    """

    decides_on_batch = False
    observes_only = True  # runs after the workers are released (DESIGN principle 3)

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[Any]] = {}
        self.epoch: list[int] = []
        # Set by distcb.run: rank -> what each worker reported at its end
        # (learning rate, weights digest, decisions applied).
        self.worker_reports: dict[int, dict[str, Any]] = {}

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self.epoch = []

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)
        if self.model is not None:
            self.model.history = self

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"
