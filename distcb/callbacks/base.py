"""The base class of coordinator callbacks, with the hook names of Keras 2 and Keras 3."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

Logs = dict[str, Any]

_Hook = TypeVar("_Hook", bound=Callable[..., Any])


def default_hook(method: _Hook) -> _Hook:
    """Mark a hook as a do-nothing default, the way Keras marks its own (``_is_default``).

    Keras 3's and tf_keras's ``CallbackList`` read the mark: a callback whose batch
    hooks are all defaults lets Keras 3 run batch hooks off the training thread,
    and lets tf_keras skip calling them.
    """
    method._is_default = True  # type: ignore[attr-defined]
    return method


def is_default_hook(method: Any) -> bool:
    return bool(getattr(method, "_is_default", False))


class Callback:
    """Base class for callbacks: the same objects run in a plain Keras ``fit`` or on distcb's
    coordinator for a distributed job.

    Same contract as ``keras.callbacks.Callback``: override the hooks you need.
    In a plain single-process ``model.fit`` (Keras 3 or tf_keras), ``self.model``
    is the Keras model and ``self.params`` what Keras passes. On the coordinator,
    ``self.params`` also holds distcb's ``num_workers``, ``samples``, ``metrics``
    and ``directions``, and ``self.model`` is the coordinator's model proxy
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
    @default_hook
    def on_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Called at the beginning of a training batch (Keras 2 name)."""

    @default_hook
    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Called at the end of a training batch with the aggregated logs (Keras 2 name)."""

    @default_hook
    def on_train_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        self.on_batch_begin(batch, logs=logs)

    @default_hook
    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        self.on_batch_end(batch, logs=logs)

    @default_hook
    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        """Called before the workers start `epoch`."""

    @default_hook
    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Called with the epoch's logs aggregated over all workers."""

    @default_hook
    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Called once every worker has joined."""

    @default_hook
    def on_train_end(self, logs: Logs | None = None) -> None:
        """Called once every worker has ended training (or the job failed)."""

    # Evaluation and prediction hooks: Keras calls them in a plain fit/evaluate/predict.
    # On the coordinator they are never called: workers do not stream them.
    @default_hook
    def on_test_begin(self, logs: Logs | None = None) -> None: ...
    @default_hook
    def on_test_end(self, logs: Logs | None = None) -> None: ...
    @default_hook
    def on_predict_begin(self, logs: Logs | None = None) -> None: ...
    @default_hook
    def on_predict_end(self, logs: Logs | None = None) -> None: ...
    @default_hook
    def on_test_batch_begin(self, batch: int, logs: Logs | None = None) -> None: ...
    @default_hook
    def on_test_batch_end(self, batch: int, logs: Logs | None = None) -> None: ...
    @default_hook
    def on_predict_batch_begin(self, batch: int, logs: Logs | None = None) -> None: ...
    @default_hook
    def on_predict_batch_end(self, batch: int, logs: Logs | None = None) -> None: ...

    # What tf_keras's CallbackList asks every callback (Keras 3 reads the marks instead).
    def _implements_train_batch_hooks(self) -> bool:
        from distcb.callbacks.callback_list import overrides_batch_hooks

        return overrides_batch_hooks(self)

    def _implements_test_batch_hooks(self) -> bool:
        return not (
            is_default_hook(self.on_test_batch_begin) and is_default_hook(self.on_test_batch_end)
        )

    def _implements_predict_batch_hooks(self) -> bool:
        return not (
            is_default_hook(self.on_predict_batch_begin)
            and is_default_hook(self.on_predict_batch_end)
        )
