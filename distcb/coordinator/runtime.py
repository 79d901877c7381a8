"""What the coordinator lends to callbacks that do asynchronous work (output sinks).

A callback that defines ``set_runtime(runtime)`` receives it before
``on_train_begin``; one that defines ``async def aclose(self)`` is awaited after
``on_train_end``, under ``Config.sink_close_timeout_s`` (the protocols of
``distcb.callbacks.extension``). Hooks run on the coordinator's callback
thread, not on the event loop: hand slow work to the loop with
``runtime.call_soon`` and keep the hook itself to microseconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from distcb.callbacks.extension import AsyncClosable
from distcb.coordinator.aggregate import Spread
from distcb.protocol.config import Config
from distcb.protocol.worker_data import EpochExtras

logger = logging.getLogger("distcb.coordinator")


@dataclass
class JobState:
    """Read-only facts about the job for sinks, updated before each hook chain runs.

    Attributes:
        epoch: the current epoch (0-based).
        global_step: merged training steps processed so far in the job (1-based count).
        batch_spread: per-metric spread over workers of the last merged step (computed
            when read: most batch hooks never look).
        epoch_spread: per-metric spread over workers of the last epoch.
        epoch_extras: rank -> the extras that worker sent with its last epoch end
            (what callbacks asked the chief for: weight histograms, the model's JSON).
        num_workers: the world size.
    """

    epoch: int = 0
    global_step: int = 0
    epoch_spread: dict[str, Spread] = field(default_factory=dict)
    epoch_extras: dict[int, EpochExtras] = field(default_factory=dict)
    num_workers: int = 0
    _batch: Any = field(default=None, repr=False)  # a spread, or a step that has one

    @property
    def batch_spread(self) -> dict[str, Spread]:
        batch = self._batch
        if batch is None:
            return {}
        spread: dict[str, Spread] = batch if isinstance(batch, dict) else batch.spread
        return spread

    @batch_spread.setter
    def batch_spread(self, spread: dict[str, Spread]) -> None:
        self._batch = spread

    def set_batch_step(self, step: Any) -> None:
        """The last merged step (anything with a `spread`): its spread, when read."""
        self._batch = step


class Runtime:
    """The coordinator's event loop, config and job state, as callbacks may use them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: Config, state: JobState):
        self.loop = loop
        self.config = config
        self.state = state
        self._tasks: set[asyncio.Task[Any]] = set()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the event loop; safe from the callback thread."""
        self.loop.call_soon_threadsafe(fn, *args)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a task owned by the coordinator: cancelled when the coordinator closes.

        Call from the event loop (e.g. inside a function given to `call_soon`).
        """
        task = self.loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close_callbacks(self, callbacks: list[Any]) -> None:
        """Await every callback's ``aclose()`` (sinks flushing), under the sink deadline."""
        closers = [cb.aclose() for cb in callbacks if isinstance(cb, AsyncClosable)]
        if not closers:
            return
        try:
            await asyncio.wait_for(
                asyncio.gather(*closers, return_exceptions=True), self.config.sink_close_timeout_s
            )
        except TimeoutError:
            logger.warning(
                "output sinks did not close within Config.sink_close_timeout_s=%g s",
                self.config.sink_close_timeout_s,
            )

    async def aclose(self) -> None:
        """Cancel and await every task still running."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
