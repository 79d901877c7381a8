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
        # Set by distcb.run: every decision the coordinator made, in order (kind, effect
        # point, the callback that made it, when).
        self.decisions: list[dict[str, Any]] = []
        self._resumed = False

    def on_train_begin(self, logs: Logs | None = None) -> None:
        if self._resumed:  # set_state() before training: go on from there
            self._resumed = False
            return
        self.epoch = []

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)
        if self.model is not None:
            self.model.history = self

    def get_state(self) -> dict[str, Any]:
        """The epochs and their logs so far (the journal makes the floats JSON)."""
        return {"epoch": list(self.epoch), "history": {k: list(v) for k, v in self.history.items()}}

    def set_state(self, state: dict[str, Any]) -> None:
        """Go on from `get_state()`: the next `on_train_begin` keeps these epochs."""
        self.epoch = [int(e) for e in state["epoch"]]
        self.history = {str(k): list(v) for k, v in state["history"].items()}
        self._resumed = True

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"
