"""Where `distcb.run`'s job runs, and how Ctrl-C reaches it.

* No event loop runs in the calling thread (a script): the job runs on a new event
  loop in this thread. In the main thread, SIGINT is taken over for the job's
  duration: the first asks for a coordinated stop (`distcb.launch.interrupt`), the
  second stops the job at once.
* An event loop runs in the calling thread (every Jupyter kernel, an async
  application): the job runs on a private thread with its own event loop, and the
  calling thread waits for it. A KeyboardInterrupt there (an interrupted notebook
  cell) is what the first Ctrl-C is above; a second one stops the job at once.
  ``await distcb.arun(...)`` runs it on that private thread too, without blocking
  the caller's loop; cancelling it is the first Ctrl-C, cancelling it again the second,
  and it raises CancelledError once the job ended.

In every case `run` returns the History after a coordinated stop and raises
KeyboardInterrupt after a hard one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from distcb.launch import interrupt

_T = TypeVar("_T")


async def _guarded(handle: interrupt.StopHandle, make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    handle.task = asyncio.current_task()
    token = interrupt.set_current(handle)  # the backend's `interrupt.attach` finds it
    try:
        if handle.cancelled:  # interrupted before the loop ran
            raise asyncio.CancelledError()
        return await make()
    finally:
        interrupt.reset_current(token)


def _raise_if_cancelled(handle: interrupt.StopHandle) -> None:
    if handle.cancelled:
        raise KeyboardInterrupt()


def run_here(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run the job on a new event loop in this thread (no loop runs here)."""
    handle = interrupt.StopHandle()
    main = threading.current_thread() is threading.main_thread()
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        previous: Any = None
        if main:
            # Ours instead of asyncio.Runner's, which would cancel the job at the first Ctrl-C.
            previous = signal.signal(
                signal.SIGINT, lambda signum, frame: loop.call_soon_threadsafe(handle.interrupt)
            )
        try:
            return runner.run(_guarded(handle, make))
        except asyncio.CancelledError:
            _raise_if_cancelled(handle)
            raise
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)


class JobThread:
    """The job on a private thread with its own event loop (a loop runs in the caller's)."""

    def __init__(self, make: Callable[[], Coroutine[Any, Any, Any]]):
        self.handle = interrupt.StopHandle()
        self.result: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._make = make
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="distcb-job", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        try:
            with asyncio.Runner() as runner:
                self._loop = runner.get_loop()
                self._ready.set()
                value = runner.run(_guarded(self.handle, self._make))
        except BaseException as exc:  # handed to the caller's thread
            self.result.set_exception(exc)
        else:
            self.result.set_result(value)
        finally:
            self._ready.set()

    def interrupt(self) -> None:
        """One Ctrl-C, from any thread."""
        loop = self._loop
        if loop is None or self.result.done():
            return
        with contextlib.suppress(RuntimeError):  # its loop just closed: the job is over
            loop.call_soon_threadsafe(self.handle.interrupt)

    def wait(self) -> Any:
        """Block until the job ended; KeyboardInterrupt in this thread is a Ctrl-C."""
        while self._thread.is_alive():
            try:
                self._thread.join()
            except KeyboardInterrupt:
                self.interrupt()
        return self._outcome()

    async def wait_async(self) -> Any:
        """Await the job's end without blocking this loop. A cancellation is a Ctrl-C: the
        job stops (coordinated, or at once the second time), then CancelledError is raised."""
        waiting = asyncio.wrap_future(self.result)
        cancelled = False
        while not waiting.done():
            try:
                await asyncio.shield(waiting)
            except asyncio.CancelledError:
                cancelled = True
                self.interrupt()
        if cancelled:
            raise asyncio.CancelledError()
        return self._outcome()

    def _outcome(self) -> Any:
        try:
            return self.result.result()
        except asyncio.CancelledError:
            _raise_if_cancelled(self.handle)
            raise
