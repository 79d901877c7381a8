"""Ctrl-C of `distcb.run`: a coordinated stop first, a hard stop on the second.

The first Ctrl-C (SIGINT in a script, an interrupted cell in a notebook) asks the
coordinator to stop at the next epoch end, as a callback setting
``model.stop_training`` would: every worker stops there, `on_train_end` runs,
and `distcb.run` returns the History. A second Ctrl-C, or one before the workers
started training, cancels the job: the backend stops its workers, and
`distcb.run` raises KeyboardInterrupt.

A backend hooks its coordinator in with `attach` from inside the job's task
(the handle travels in a context variable, so concurrent jobs never mix).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from distcb.coordinator.engine import Coordinator
    from distcb.launch.progress import JobProgress

REASON = "Ctrl-C"


class StopHandle:
    """How an interrupt reaches one running job. `interrupt` is called on the job's loop."""

    def __init__(self, err: TextIO | None = None) -> None:
        self.coordinators: list[Coordinator] = []
        self.progress: list[JobProgress] = []
        self.task: asyncio.Task[Any] | None = None
        self.interrupts = 0
        self.cancelled = False  # a hard stop: the caller raises KeyboardInterrupt
        self._err = err

    def attach(self, coordinator: Coordinator, progress: JobProgress | None = None) -> None:
        self.coordinators.append(coordinator)
        if progress is not None:
            self.progress.append(progress)

    def interrupt(self) -> None:
        """One Ctrl-C (on the job's event loop)."""
        self.interrupts += 1
        coordinated = self.interrupts == 1 and bool(self.coordinators)
        if coordinated and all(c.request_stop(REASON) for c in self.coordinators):
            self._say(
                f"{REASON}: the job stops at the end of this epoch, on every worker "
                f"(press {REASON} again to stop at once)"
            )
            return
        self.cancel()

    def cancel(self) -> None:
        """A hard stop: the job's task is cancelled (its backend stops the workers)."""
        self.cancelled = True
        if self.task is not None and not self.task.done():
            self._say(f"{REASON}: stopping the workers now")
            self.task.cancel()

    def _say(self, text: str) -> None:
        for progress in self.progress:
            progress.note(text)
            return
        with contextlib.suppress(Exception):
            err = self._err or sys.stderr
            err.write(f"distcb: {text}\n")
            err.flush()


_current: contextvars.ContextVar[StopHandle | None] = contextvars.ContextVar(
    "distcb_stop_handle", default=None
)


def attach(coordinator: Coordinator, progress: JobProgress | None = None) -> None:
    """Let Ctrl-C stop `coordinator`'s job (a backend calls this from the job's task)."""
    handle = _current.get()
    if handle is not None:
        handle.attach(coordinator, progress)


def current() -> StopHandle | None:
    return _current.get()


def set_current(handle: StopHandle | None) -> contextvars.Token[StopHandle | None]:
    return _current.set(handle)


def reset_current(token: contextvars.Token[StopHandle | None]) -> None:
    _current.reset(token)
