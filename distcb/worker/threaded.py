"""A `WorkerSession` for a training thread: its event loop runs on an IO thread.

The training thread never does I/O. It calls these methods from Keras's
hooks; they return at once except where the protocol makes a worker wait (the
go signal, the window rule, the epoch barrier, the train end), and then block
on the session's own coroutine, so there is one waiting mechanism for both
kinds of worker. Decisions are applied here, on the training thread, where
the model lives.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from distcb.protocol.errors import DistcbError
from distcb.protocol.messages import EpochEnd, JoinParams, Start
from distcb.worker.session import WorkerSession

_T = TypeVar("_T")


class ThreadedSession:
    """Drive `session` from a training thread; its loop runs on a daemon IO thread."""

    def __init__(self, session: WorkerSession):
        self.session = session
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, params: JoinParams) -> Start:
        """Start the IO thread, connect, join and wait for the go signal."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"distcb-worker-{self.session.rank}-io", daemon=True
        )
        running = threading.Event()
        loop.call_soon(running.set)  # the loop's first callback: it runs from then on
        self._thread.start()
        running.wait()  # else `_call` could find the loop not running yet (a loaded machine)
        # Its decisions wait in the protocol for their effect points (the first epoch begin).
        return self._call(self.session.open(params))

    def begin_epoch(self, epoch: int) -> None:
        self.session.apply(self.session.begin_epoch(epoch), -1)

    def begin_batch(self, step: int) -> None:
        decisions = self.session.begin_batch_nowait(step)
        if decisions is None:
            decisions = self._call(self.session.begin_batch(step))
        if decisions:
            self.session.apply(decisions, step)

    def end_epoch(self, message: EpochEnd) -> None:
        self.session.apply(self._call(self.session.end_epoch(message)), -1)

    def end_training(self) -> str | None:
        """The train end: apply the last decisions; returns the job's error (or None)."""
        decisions, error = self._call(self.session.end_training())
        self.session.apply(decisions, -1)
        return error

    def finish(self, report: dict[str, Any]) -> None:
        """Send this worker's report, close, and stop the IO thread."""
        try:
            self._call(self.session.finish(report), self.session.config.reply_timeout_s)
        finally:
            self._stop_thread()

    @property
    def verdict(self) -> str | None:
        """What the coordinator said of the job: "restart" (it goes on from its backups),
        "failed" (it aborted the job), or None (nothing: training goes on)."""
        protocol = self.session.protocol
        if protocol.restart:
            return "restart"
        return "failed" if protocol.abort_reason is not None else None

    def fail(self, error: BaseException) -> None:
        """Tell the coordinator training raised (bounded), close, stop the IO thread."""
        try:
            with contextlib.suppress(Exception):
                self._call(self.session.fail(error), self.session.config.reply_timeout_s)
        finally:
            self._stop_thread()

    def close(self) -> None:
        """Close without a report (bounded) and stop the IO thread."""
        try:
            with contextlib.suppress(Exception):
                self._call(self.session.close(), self.session.config.reply_timeout_s)
        finally:
            self._stop_thread()

    def _call(self, coro: Coroutine[Any, Any, _T], timeout_s: float | None = None) -> _T:
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            coro.close()
            lost = self.session.protocol.lost
            raise lost or DistcbError(f"rank {self.session.rank}: the worker's IO thread is gone")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DistcbError(
                f"rank {self.session.rank}: the worker's IO did not finish within {timeout_s:g} s"
            ) from None

    def _stop_thread(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
        if thread is not threading.current_thread():
            thread.join(self.session.config.reply_timeout_s)
        if not thread.is_alive() and not loop.is_closed():
            loop.close()
