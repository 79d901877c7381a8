"""BaseLogger: the seed's (Keras 2.3) sample-weighted average of batch values over an epoch."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from distcb.callbacks.base import Callback, Logs


class BaseLogger(Callback):
    """Accumulates epoch averages of per-batch metrics, weighted by batch ``size``.

    For batch logs that carry each batch's own value and its ``size`` (the
    Keras 2.3 convention); metrics named in `stateful_metrics` are taken as they
    are at the last batch. At epoch end it writes the averages of the metrics
    listed in ``params["metrics"]`` into the epoch logs.

    Args:
        stateful_metrics: names of metrics not to average.
    """

    decides_on_batch = False

    def __init__(self, stateful_metrics: Iterable[str] | None = None):
        super().__init__()
        if isinstance(stateful_metrics, str):
            raise TypeError(
                "stateful_metrics must be a collection of names, received the string "
                f"{stateful_metrics!r}"
            )
        self.stateful_metrics = set(stateful_metrics or ())
        self.seen = 0.0
        self.totals: dict[str, Any] = {}

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self.seen = 0.0
        self.totals = {}

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        logs = logs or {}
        size = float(logs.get("size", 0) or 0)
        self.seen += size
        for key, value in logs.items():
            if key in ("size", "batch"):
                continue
            if key in self.stateful_metrics:
                self.totals[key] = value
            else:
                self.totals[key] = self.totals.get(key, 0.0) + value * size

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if logs is None:
            return
        for key in self.params.get("metrics", ()):
            if key not in self.totals:
                continue
            if key in self.stateful_metrics:
                logs[key] = self.totals[key]
            elif self.seen > 0:
                logs[key] = self.totals[key] / self.seen
