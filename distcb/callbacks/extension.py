"""The extension points of a coordinator callback, as typed protocols.

A callback on the coordinator is any Keras-style callback: a subclass of
``distcb.callbacks.Callback``, or of ``keras.callbacks.Callback`` that knows
nothing of distcb. Beyond the Keras hooks it *may* offer more, and the
coordinator looks for each extra by structure (``isinstance`` against a
``runtime_checkable`` protocol), never by inheritance, so that a user's own
Keras callback runs unchanged, and one that defines, say, ``get_state`` and
``set_state`` is journaled without subclassing anything of distcb's:

- :class:`NeedsRuntime`: ``set_runtime(runtime)`` receives the coordinator's
  :class:`Runtime` (its event loop, config and job state) before ``on_train_begin``.
- :class:`Stateful`: ``get_state()`` / ``set_state(state)``: journaled at every
  epoch barrier, restored when the job resumes.
- :class:`Syncable`: ``sync()`` blocks until what the callback queued is written
  (called before ``get_state``, so that what the state counts is on disk).
- :class:`AsyncClosable`: ``async aclose()`` is awaited after ``on_train_end``.
- :class:`HasStatistics`: ``statistics()`` shows on ``/status`` under ``sinks``.
- :class:`AsksWorkers`: ``worker_requests()`` says what the chief worker must
  compute from its model (``distcb.protocol.worker_data``), sent back in the
  epoch-end extras that ``runtime.state.epoch_extras`` holds.
- the class attributes ``observes_only`` (:class:`Observer`) and
  ``decides_on_batch`` (:class:`BatchDecider`), read with their defaults by
  :func:`observes_only` and :func:`may_decide_on_batch`.

An output :class:`Sink` is the usual bundle of these. Protocols rather than
base-class methods with defaults: a base class reaches only the callbacks that
inherit it, and Keras's own ``Callback`` cannot be given distcb's methods.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from distcb.protocol.config import Config
from distcb.protocol.worker_data import AnyWorkerRequest, EpochExtras


class SpreadView(Protocol):
    """Where the workers disagree on one metric."""

    @property
    def min(self) -> float: ...
    @property
    def max(self) -> float: ...


class JobView(Protocol):
    """Read-only facts about the job, updated before each hook chain runs."""

    @property
    def epoch(self) -> int: ...
    @property
    def global_step(self) -> int:
        """Merged training steps processed so far in the job."""

    @property
    def num_workers(self) -> int: ...
    @property
    def batch_spread(self) -> Mapping[str, SpreadView]:
        """Per-metric spread over workers of the last merged step."""

    @property
    def epoch_spread(self) -> Mapping[str, SpreadView]:
        """Per-metric spread over workers of the last epoch."""

    @property
    def epoch_extras(self) -> Mapping[int, EpochExtras]:
        """Rank -> what that worker sent with its last epoch end (see `AsksWorkers`)."""


class Runtime(Protocol):
    """What the coordinator lends a callback (``distcb.coordinator.runtime.Runtime``).

    Hooks run on the coordinator's callback thread, not on the event loop: hand
    slow work to the loop with `call_soon` and keep the hook itself to microseconds.
    """

    @property
    def config(self) -> Config: ...
    @property
    def state(self) -> JobView: ...
    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the event loop; safe from the callback thread."""

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a task the coordinator owns (call from the event loop)."""


@runtime_checkable
class NeedsRuntime(Protocol):
    def set_runtime(self, runtime: Runtime) -> None: ...


@runtime_checkable
class Stateful(Protocol):
    def get_state(self) -> dict[str, Any]: ...
    def set_state(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class Syncable(Protocol):
    def sync(self) -> None: ...


@runtime_checkable
class AsyncClosable(Protocol):
    async def aclose(self) -> None: ...


@runtime_checkable
class HasStatistics(Protocol):
    def statistics(self) -> Any:
        """A dict or a dataclass of JSON values."""


@runtime_checkable
class AsksWorkers(Protocol):
    def worker_requests(self) -> Sequence[AnyWorkerRequest]: ...


@runtime_checkable
class Observer(Protocol):
    observes_only: bool


@runtime_checkable
class BatchDecider(Protocol):
    decides_on_batch: bool


@runtime_checkable
class ImplementsBatchHooks(Protocol):
    def implements_batch_hooks(self) -> bool: ...


@runtime_checkable
class Sink(NeedsRuntime, AsyncClosable, HasStatistics, Observer, Protocol):
    """An output sink: it observes only, writes with the coordinator's runtime, reports its
    statistics, and is closed after ``on_train_end``."""


def observes_only(callback: object) -> bool:
    """Whether `callback` never decides (its epoch hooks run after the workers are released);
    False for one that does not say."""
    return isinstance(callback, Observer) and bool(callback.observes_only)


def may_decide_on_batch(callback: object) -> bool:
    """Whether `callback`'s batch hooks may decide; True for one that does not say."""
    return not isinstance(callback, BatchDecider) or bool(callback.decides_on_batch)
