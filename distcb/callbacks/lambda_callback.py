"""LambdaCallback: hooks from plain functions, under Keras 3 or Keras 2 names."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from distcb.callbacks.base import Callback
from distcb.callbacks.extension import Runtime

# Hook name -> how many arguments it takes before `logs`.
_HOOKS = {
    "on_epoch_begin": 1,
    "on_epoch_end": 1,
    "on_train_begin": 0,
    "on_train_end": 0,
    "on_train_batch_begin": 1,
    "on_train_batch_end": 1,
    "on_test_begin": 0,
    "on_test_end": 0,
    "on_predict_begin": 0,
    "on_predict_end": 0,
    "on_test_batch_begin": 1,
    "on_test_batch_end": 1,
    "on_predict_batch_begin": 1,
    "on_predict_batch_end": 1,
}
_KERAS2_ALIASES = {"on_batch_begin": "on_train_batch_begin", "on_batch_end": "on_train_batch_end"}
# Workers do not stream evaluation or prediction: on the coordinator these never fire.
_NOT_ON_COORDINATOR = tuple(h for h in _HOOKS if h.startswith(("on_test", "on_predict")))


def _hook(fn: Callable[..., Any], leading: int) -> Callable[..., Any]:
    """`fn` called positionally as ``fn(*leading_args, logs)``, however Keras passes `logs`."""

    def hook(*args: Any, logs: Any = None) -> Any:
        if len(args) > leading:  # logs given positionally
            return fn(*args)
        return fn(*args, logs)

    hook.__wrapped__ = fn  # type: ignore[attr-defined]
    return hook


class LambdaCallback(Callback):
    """A callback built from functions, as ``keras.callbacks.LambdaCallback``.

    Every hook Keras 3 calls can be given: ``on_epoch_begin(epoch, logs)``,
    ``on_epoch_end(epoch, logs)``, ``on_train_begin(logs)``, ``on_train_end(logs)``,
    ``on_train_batch_begin(batch, logs)``, ``on_train_batch_end(batch, logs)``, and
    the evaluation/prediction hooks ``on_test_begin``, ``on_test_end``,
    ``on_predict_begin``, ``on_predict_end`` (``(logs)``) and
    ``on_test_batch_begin``, ``on_test_batch_end``, ``on_predict_batch_begin``,
    ``on_predict_batch_end`` (``(batch, logs)``). Keras 2's ``on_batch_begin`` /
    ``on_batch_end`` are accepted for the training batch ones. Functions are called
    positionally. Any other keyword argument is attached to the callback as an
    attribute, as Keras does (``LambdaCallback(helper=f).helper``).

    In a plain ``fit``/``evaluate``/``predict`` every hook fires as in Keras. On
    distcb's coordinator, logs are aggregated over all workers and the
    evaluation/prediction hooks never fire (workers do not stream them): a warning
    says so once when such a callback joins a job. A function that needs the model
    can close over the callback and use ``callback.model``.

    Raises:
        TypeError: a hook that is not callable, or an extra keyword argument that
            would hide one of the callback's own attributes.
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
        for name in [k for k in kwargs if k in _HOOKS]:
            given[name] = kwargs.pop(name)
        for old, new in _KERAS2_ALIASES.items():
            value = kwargs.pop(old, None)
            if value is not None:
                if given.get(new) is not None:
                    raise ValueError(
                        f"LambdaCallback received both {old} (Keras 2 name) and {new} (Keras 3 "
                        "name) for the same hook; pass only one."
                    )
                given[new] = value
        for name, fn in given.items():
            if fn is not None and not callable(fn):
                raise TypeError(f"LambdaCallback {name} must be callable, received {fn!r}.")
        self.functions: dict[str, Callable[..., Any]] = {
            name: fn for name, fn in given.items() if fn is not None
        }
        for name, fn in self.functions.items():
            setattr(self, name, _hook(fn, _HOOKS[name]))
        self._attach_extras(kwargs)
        # Only batch functions can decide on batch ends; without them workers never wait.
        self.decides_on_batch = any(
            name in self.functions for name in ("on_train_batch_begin", "on_train_batch_end")
        )

    def _attach_extras(self, extras: dict[str, Any]) -> None:
        taken = sorted(name for name in extras if hasattr(self, name))
        if taken:
            raise TypeError(
                f"LambdaCallback keyword arguments {taken} would hide the callback's own "
                "attributes of those names; rename them."
            )
        not_hooks = sorted(name for name in extras if name.startswith("on_"))
        if not_hooks:
            warnings.warn(
                f"LambdaCallback: {not_hooks} are not hooks Keras calls, so they never fire; "
                f"they are attached as attributes. The hooks are: {', '.join(_HOOKS)}.",
                stacklevel=3,
            )
        for name, value in extras.items():
            setattr(self, name, value)

    def implements_batch_hooks(self) -> bool:
        """Batch hooks matter only when they can act (see CallbackList)."""
        return bool(self.decides_on_batch)

    def set_runtime(self, runtime: Runtime) -> None:
        """Called when the callback joins a distcb job: warn about hooks that cannot fire there."""
        idle = [name for name in _NOT_ON_COORDINATOR if name in self.functions]
        if idle:
            warnings.warn(
                f"LambdaCallback {idle} never fire on the distcb coordinator: workers do not "
                "stream evaluation or prediction. They fire when the callback is passed to a "
                "plain model.fit/evaluate/predict.",
                stacklevel=2,
            )

    def get_state(self) -> dict[str, Any]:
        """Nothing to keep: the functions own their state."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""
