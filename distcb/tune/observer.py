"""The coordinator's side of a Tune trial: hands each released epoch to the trial process.

Lives in the coordinator actor. `TuneObserver.callback()` is the last callback
of the chain (after History); `attach(coordinator)` makes the observer one of
the coordinator's `JobListener`s: it learns which epochs were released, which
saves the chief reported, and when the job ended, without reading the
engine's state. The trial process calls `next_event` and `verdict` through
the actor's ``observe``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from distcb.callbacks.base import Callback, Logs
from distcb.coordinator.listener import JobListener
from distcb.coordinator.model_proxy import DecisionRecord
from distcb.protocol.decisions import EffectPoint, SaveModel
from distcb.protocol.logs import to_json_value
from distcb.protocol.messages import Saved


class _TuneBridge(Callback):
    """Last in the coordinator's chain: at epoch e's end, waits for Tune's verdict on e - 1."""

    decides_on_batch = False

    def __init__(self, observer: TuneObserver):
        super().__init__()
        self._observer = observer

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if self._observer.wait_verdicts(epoch):
            self.model.stop_training = True


@dataclass
class _Epoch:
    epoch: int
    logs: Logs
    expected_saves: set[str]
    saved: list[str] = field(default_factory=list)


class TuneObserver(JobListener):
    """Pairs each released epoch with the saves it caused, for the trial to report.

    Callback-thread side: `wait_verdicts`. Event-loop side: the listener methods and,
    through the actor's ``observe``, `next_event` and `verdict`.
    """

    def __init__(self) -> None:
        self._init()

    def _init(self) -> None:
        self._cond = threading.Condition()
        self._changed: asyncio.Event | None = None
        self._epochs: collections.deque[_Epoch] = collections.deque()
        self._last_released: int | None = None
        self._verdicts: dict[int, bool] = {}
        self._stopping = False
        self._ended = False

    def __getstate__(self) -> dict[str, Any]:
        return {}  # built fresh inside the actor

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._init()

    def callback(self) -> Callback:
        return _TuneBridge(self)

    def attach(self, coordinator: Any) -> None:
        self._changed = asyncio.Event()
        coordinator.add_listener(self)

    # ---------------------------------------------------------------- callback thread

    def wait_verdicts(self, epoch: int) -> bool:
        """At epoch `epoch`'s end: wait until Tune answered every epoch before it.
        True to stop. No timeout: the trial process answers while it lives, and when it
        dies Ray takes this actor with it."""
        with self._cond:
            while self._last_released is not None and self._last_released not in self._verdicts:
                self._cond.wait()
            return self._stopping

    # ---------------------------------------------------------------- JobListener (event loop)

    def epoch_released(self, epoch: int, logs: Logs, records: Sequence[DecisionRecord]) -> None:
        at = EffectPoint.epoch_end(epoch)
        expected = {
            r.decision.filepath
            for r in records
            if isinstance(r.decision, SaveModel) and r.decision.at == at
        }
        # The epoch before has no more saves coming: its barrier moved on.
        for pending in self._epochs:
            pending.expected_saves.clear()
        self._epochs.append(_Epoch(epoch, dict(logs), expected))
        with self._cond:
            self._last_released = epoch
        self._wake()

    def saved(self, message: Saved) -> None:
        for pending in self._epochs:
            if message.filepath in pending.expected_saves:
                pending.expected_saves.discard(message.filepath)
                if message.error is None:
                    pending.saved.append(message.filepath)
                break
        self._wake()

    def ended(self, failure: BaseException | None) -> None:
        self._ended = True
        for pending in self._epochs:
            pending.expected_saves.clear()
        self._wake()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    # ---------------------------------------------------------------- trial process (event loop)

    async def verdict(self, epoch: int, stop: bool) -> None:
        with self._cond:
            self._verdicts[int(epoch)] = bool(stop)
            self._stopping = self._stopping or bool(stop)
            self._cond.notify_all()

    async def next_event(self, wait_s: float) -> dict[str, Any] | None:
        """The next epoch to report once the chief carried out its saves;
        ``{"kind": "end"}`` after the last; None when nothing came within `wait_s`."""
        assert self._changed is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, float(wait_s))
        while True:
            self._changed.clear()
            event = self._ready()
            if event is not None:
                return event
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()

    def _ready(self) -> dict[str, Any] | None:
        if not self._epochs:
            return {"kind": "end"} if self._ended else None
        first = self._epochs[0]
        if first.expected_saves:
            return None  # the chief is still saving (its Saved precedes its next epoch end)
        self._epochs.popleft()
        return {
            "kind": "epoch",
            "epoch": first.epoch,
            "logs": to_json_value(first.logs),
            "saved": list(dict.fromkeys(first.saved)),
        }
