"""LambdaCallback: hooks from plain functions, under Keras 3 or Keras 2 names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distcb.callbacks.base import Callback, Logs

_HOOKS = (
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_begin",
    "on_train_end",
    "on_train_batch_begin",
    "on_train_batch_end",
)
_KERAS2_ALIASES = {"on_batch_begin": "on_train_batch_begin", "on_batch_end": "on_train_batch_end"}


class LambdaCallback(Callback):
    """A callback built from functions, as ``keras.callbacks.LambdaCallback``.

    Functions are called positionally: ``on_epoch_begin(epoch, logs)``,
    ``on_epoch_end(epoch, logs)``, ``on_train_begin(logs)``, ``on_train_end(logs)``,
    ``on_train_batch_begin(batch, logs)``, ``on_train_batch_end(batch, logs)``.
    Keras 2's ``on_batch_begin`` / ``on_batch_end`` are accepted for the batch ones.
    Logs are aggregated over all workers. A function that needs the model can
    close over the callback and use ``callback.model`` (the coordinator's proxy).

    Raises:
        TypeError: an unknown keyword argument or a function that is not callable.
        ValueError: a batch hook given under both its Keras 2 and Keras 3 names.
    """

    def __init__(
        self,
        on_epoch_begin: Callable[..., Any] | None = None,
        on_epoch_end: Callable[..., Any] | None = None,
        on_train_begin: Callable[..., Any] | None = None,
        on_train_end: Callable[..., Any] | None = None,
        on_train_batch_begin: Callable[..., Any] | None = None,
        on_train_batch_end: Callable[..., Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__()
        given: dict[str, Any] = {
            "on_epoch_begin": on_epoch_begin,
            "on_epoch_end": on_epoch_end,
            "on_train_begin": on_train_begin,
            "on_train_end": on_train_end,
            "on_train_batch_begin": on_train_batch_begin,
            "on_train_batch_end": on_train_batch_end,
        }
        unknown = sorted(k for k in kwargs if k not in _KERAS2_ALIASES)
        if unknown:
            raise TypeError(
                f"LambdaCallback got unexpected keyword arguments {unknown}; it accepts "
                f"{', '.join(_HOOKS)} and Keras 2's {', '.join(_KERAS2_ALIASES)}."
            )
        for old, new in _KERAS2_ALIASES.items():
            if old in kwargs and kwargs[old] is not None:
                if given[new] is not None:
                    raise ValueError(
                        f"LambdaCallback received both {old} (Keras 2 name) and {new} (Keras 3 "
                        "name) for the same hook; pass only one."
                    )
                given[new] = kwargs[old]
        for name, fn in given.items():
            if fn is not None and not callable(fn):
                raise TypeError(f"LambdaCallback {name} must be callable, received {fn!r}.")
        self._functions: dict[str, Callable[..., Any]] = {
            name: fn for name, fn in given.items() if fn is not None
        }
        # Only batch functions can decide on batch ends; without them workers never wait.
        self.decides_on_batch = any(
            name in self._functions for name in ("on_train_batch_begin", "on_train_batch_end")
        )

    def implements_batch_hooks(self) -> bool:
        """Batch hooks matter only when they can act (see CallbackList)."""
        return bool(self.decides_on_batch)

    def _call(self, name: str, *args: Any) -> None:
        fn = self._functions.get(name)
        if fn is not None:
            fn(*args)

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self._call("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        self._call("on_epoch_end", epoch, logs)

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self._call("on_train_begin", logs)

    def on_train_end(self, logs: Logs | None = None) -> None:
        self._call("on_train_end", logs)

    def on_train_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        self._call("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        self._call("on_train_batch_end", batch, logs)

    def get_state(self) -> dict[str, Any]:
        """Nothing to keep: the functions own their state."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""
