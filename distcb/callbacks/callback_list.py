"""Run a chain of callbacks, Keras-style: one logs dict flows down the chain."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from distcb.callbacks.extension import (
    AsksWorkers,
    ImplementsBatchHooks,
    NeedsRuntime,
    Runtime,
    may_decide_on_batch,
    observes_only,
)
from distcb.protocol.worker_data import AnyWorkerRequest

Logs = dict[str, Any]

_BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end")
# Base classes whose batch hooks do nothing but forward to the Keras 2 names.
_BASE_CALLBACKS = {
    ("distcb.callbacks.base", "Callback"),
    ("keras.src.callbacks.callback", "Callback"),
    ("tf_keras.src.callbacks", "Callback"),
    ("keras.callbacks", "Callback"),
}


def overrides_batch_hooks(callback: Any) -> bool:
    """Whether `callback` implements a training batch hook (its own or a parent's, not a base's).

    A callback may answer for itself with ``implements_batch_hooks()`` (a
    ModelCheckpoint saving per epoch has the method but no use for it); hooks
    stored on the instance (keras.callbacks.LambdaCallback) count too.
    """
    if isinstance(callback, ImplementsBatchHooks):
        return bool(callback.implements_batch_hooks())
    return defines_batch_hooks(callback)


def defines_batch_hooks(callback: Any) -> bool:
    """Whether `callback` has a training batch hook of its own (or a parent's), not only
    the base classes' no-ops: the ones the chain may skip."""
    if any(
        callable(vars(callback).get(hook)) for hook in _BATCH_HOOKS if hasattr(callback, "__dict__")
    ):
        return True
    for hook in _BATCH_HOOKS:
        for klass in type(callback).__mro__:
            if hook in vars(klass):
                if (klass.__module__, klass.__name__) not in _BASE_CALLBACKS:
                    return True
                break
    return False


def decides_on_batch(callback: Any) -> bool:
    """Whether `callback` may make a decision from a batch hook."""
    return overrides_batch_hooks(callback) and may_decide_on_batch(callback)


@dataclass(frozen=True)
class DeferredCall:
    """An observer's hook call, run after the workers were released."""

    callback: Any
    hook: str
    args: tuple[Any, ...]
    logs: Logs

    def __call__(self) -> None:
        getattr(self.callback, self.hook)(*self.args, self.logs)


class CallbackList:
    """The coordinator's chain: user callbacks in order, then History (and ProgbarLogger)."""

    def __init__(self, callbacks: Iterable[Any] = ()):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not callable(getattr(callback, "on_epoch_end", None)):
                raise TypeError(
                    "callbacks must be Keras-style callback objects (distcb.callbacks.Callback or "
                    f"keras.callbacks.Callback subclasses), received {callback!r}"
                )
        self.params: dict[str, Any] = {}
        self.model: Any = None
        self.current: Any = None  # the callback whose hook runs now (decisions are its)
        self._batch_callbacks: list[Any] | None = None  # those with batch hooks (cached)
        self._has_batch_hooks: bool | None = None
        # Which callbacks only observe, read once: a protocol check costs tens of
        # microseconds, and the epoch hooks run on the barrier's path.
        self._observers: list[bool] | None = None

    def append(self, callback: Any) -> None:
        self.callbacks.append(callback)
        self._batch_callbacks = self._has_batch_hooks = self._observers = None

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params
        for callback in self.callbacks:
            callback.set_params(params)

    def set_model(self, model: Any) -> None:
        self.model = model
        for callback in self.callbacks:
            callback.set_model(model)

    def attach(self, params: dict[str, Any], model: Any, runtime: Runtime | None) -> None:
        """Give every callback the params, the model proxy, and (if it wants it) the runtime
        (without one, callbacks run as in a plain ``fit``)."""
        self._batch_callbacks = self._has_batch_hooks = self._observers = None
        self.set_params(params)
        self.set_model(model)
        for callback in self.callbacks:
            if runtime is not None and isinstance(callback, NeedsRuntime):
                callback.set_runtime(runtime)

    @property
    def worker_requests(self) -> tuple[AnyWorkerRequest, ...]:
        """What the callbacks ask the chief worker to compute from its model, each once."""
        requests = (
            request
            for callback in self.callbacks
            if isinstance(callback, AsksWorkers)
            for request in callback.worker_requests()
        )
        return tuple(dict.fromkeys(requests))

    @property
    def has_batch_hooks(self) -> bool:
        """Whether a callback wants batch logs (read once per merged run of steps)."""
        answer = self._has_batch_hooks
        if answer is None:
            answer = self._has_batch_hooks = any(overrides_batch_hooks(cb) for cb in self.callbacks)
        return answer

    @property
    def decides_on_batch(self) -> bool:
        return any(decides_on_batch(cb) for cb in self.callbacks)

    def observers(self) -> list[bool]:
        """For each callback, whether it only observes (`observes_only`)."""
        answer = self._observers
        if answer is None:
            answer = self._observers = [observes_only(cb) for cb in self.callbacks]
        return answer

    def _call(
        self, hook: str, *args: Any, logs: Logs | None, defer: list[DeferredCall] | None = None
    ) -> Logs:
        logs = {} if logs is None else logs
        for callback, observer in zip(self.callbacks, self.observers(), strict=True):
            if defer is not None and observer:
                # The logs as they stand at this callback's place in the chain.
                defer.append(DeferredCall(callback, hook, args, dict(logs)))
            else:
                self.current = callback
                getattr(callback, hook)(*args, logs)
        self.current = None
        return logs

    def on_epoch_end_deferring(self, epoch: int, logs: Logs, defer: list[DeferredCall]) -> Logs:
        """`on_epoch_end` for deciding callbacks now; observers' calls appended to `defer`."""
        return self._call("on_epoch_end", epoch, logs=logs, defer=defer)

    def on_epoch_begin_deferring(self, epoch: int, defer: list[DeferredCall]) -> Logs:
        """`on_epoch_begin` for deciding callbacks now; observers' calls appended to `defer`."""
        return self._call("on_epoch_begin", epoch, logs=None, defer=defer)

    def on_train_begin(self, logs: Logs | None = None) -> Logs:
        return self._call("on_train_begin", logs=logs)

    def on_train_end(self, logs: Logs | None = None) -> Logs:
        return self._call("on_train_end", logs=logs)

    def on_train_end_each(
        self, logs: Logs | None = None, *, observers_only: bool = False
    ) -> list[BaseException]:
        """`on_train_end` on every callback (or only on the observers, which close their
        files) even when one raises; returns what they raised."""
        logs = {} if logs is None else logs
        errors: list[BaseException] = []
        for callback, observer in zip(self.callbacks, self.observers(), strict=True):
            if observers_only and not observer:
                continue
            self.current = callback
            try:
                callback.on_train_end(logs)
            except Exception as exc:
                errors.append(exc)
        self.current = None
        return errors

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> Logs:
        return self._call("on_epoch_begin", epoch, logs=logs)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> Logs:
        return self._call("on_epoch_end", epoch, logs=logs)

    def on_train_batch_begin(self, batch: int, logs: Logs | None = None) -> Logs:
        return self._call_batch("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> Logs:
        return self._call_batch("on_train_batch_end", batch, logs)

    def _call_batch(self, hook: str, batch: int, logs: Logs | None) -> Logs:
        """A batch hook of the callbacks that implement one (the others' do nothing): it
        runs once per merged step, so the chain skips the no-ops."""
        callbacks = self._batch_callbacks
        if callbacks is None:
            callbacks = self._batch_callbacks = [
                cb for cb in self.callbacks if defines_batch_hooks(cb)
            ]
        logs = {} if logs is None else logs
        for callback in callbacks:
            self.current = callback
            getattr(callback, hook)(batch, logs)
        self.current = None
        return logs
