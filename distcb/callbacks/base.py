"""The base class of coordinator callbacks, with the hook names of Keras 2 and Keras 3."""

from __future__ import annotations

from typing import Any

Logs = dict[str, Any]


class Callback:
    """Base class for callbacks that run once per job, on the coordinator.

    Same contract as ``keras.callbacks.Callback``: override the hooks you need;
    ``self.params`` holds the training parameters (``epochs``, ``steps``,
    ``verbose``, plus distcb's ``num_workers``, ``samples``, ``metrics`` and
    ``directions``), and ``self.model`` is the coordinator's model proxy
    (``stop_training``, ``optimizer.learning_rate``, ``get_weights`` /
    ``set_weights``, ``save`` / ``save_weights``).

    ``on_train_batch_begin``/``on_train_batch_end`` call Keras 2's
    ``on_batch_begin``/``on_batch_end`` by default, so overriding either name works.
    Logs in batch hooks are aggregated over all workers.

    Class attribute ``decides_on_batch``: set it to False on a callback whose batch
    hooks only observe (a progress bar, a log writer). When no callback with batch
    hooks decides, workers never wait on batch progress.

    Class attribute ``observes_only``: True on callbacks that never decide (sinks,
    History, ProgbarLogger). At an epoch barrier the coordinator runs their epoch
    hooks after it has released the workers, each with the logs as they stood at
    its place in the chain, so that their I/O never adds to the barrier.
    """

    decides_on_batch: bool = True
    observes_only: bool = False

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self._model: Any = None

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def set_model(self, model: Any) -> None:
        self._model = model

    @property
    def model(self) -> Any:
        return self._model

    # Keras 2 batch hooks; the Keras 3 names below call them.
    def on_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Called at the beginning of a training batch (Keras 2 name)."""

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Called at the end of a training batch with the aggregated logs (Keras 2 name)."""

    def on_train_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        self.on_batch_end(batch, logs=logs)

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        """Called before the workers start `epoch`."""

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Called with the epoch's logs aggregated over all workers."""

    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Called once every worker has joined."""

    def on_train_end(self, logs: Logs | None = None) -> None:
        """Called once every worker has ended training (or the job failed)."""

    # Evaluation and prediction hooks exist for API compatibility; workers do
    # not stream them, so they are never called on the coordinator.
    def on_test_begin(self, logs: Logs | None = None) -> None: ...
    def on_test_end(self, logs: Logs | None = None) -> None: ...
    def on_predict_begin(self, logs: Logs | None = None) -> None: ...
    def on_predict_end(self, logs: Logs | None = None) -> None: ...
    def on_test_batch_begin(self, batch: int, logs: Logs | None = None) -> None: ...
    def on_test_batch_end(self, batch: int, logs: Logs | None = None) -> None: ...
    def on_predict_batch_begin(self, batch: int, logs: Logs | None = None) -> None: ...
    def on_predict_batch_end(self, batch: int, logs: Logs | None = None) -> None: ...
