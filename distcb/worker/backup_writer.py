"""Persisting backups off the training thread (issue 24).

At an epoch barrier the training thread only *captures* the model's state in memory
(`DecisionTarget.capture_state`: for Keras 3 on TensorFlow, views of the variables'
current buffers, which TensorFlow copies before its next update writes them); a
`BackupWriter` thread then writes, checksums and fsyncs it, and reports `BackedUp` once
it is durable. The commit protocol does not change: the coordinator commits a barrier
only when every rank's report has arrived, so a kill while a persist runs leaves that
barrier uncommitted, exactly as a kill inside a synchronous write did
(docs/commit-protocol.md).

Memory is bounded: at most one backup is in flight per worker. When the next barrier's
backup comes while the previous one is still being persisted, the training thread waits
for it (`wait_s` counts that time): every barrier stays a rollback point, and a slow disk
shows up as time, never as an unbounded queue of model copies. Work that must be
ordered with a backup (persisting a weight snapshot a barrier names) goes through the
same queue, first in, first out.

The thread runs at a lower CPU priority (Linux ``nice``), so that on a machine whose
cores are all training it takes the time training leaves idle (the barrier's waits)
before it takes training's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable

logger = logging.getLogger("distcb.worker")

WRITER_NICENESS = 10  # added to the writer thread's nice value (Linux); 0: as training


class BackupWriter:
    """One thread that runs persist jobs in order.

    Args:
        name: the thread's name.
    """

    def __init__(self, name: str = "distcb-backup-writer"):
        self._name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], bool] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0  # jobs queued or running
        self._backups_pending = 0
        self._idle = threading.Condition(self._lock)
        self._closed = False
        self.wait_s = 0.0  # time the training thread waited for a previous backup
        self.waits = 0
        self.persist_s: list[float] = []  # how long each backup took to persist

    def submit(self, job: Callable[[], None], *, backup: bool = False) -> None:
        """Queue `job`. A `backup` first waits until no other backup is queued or running
        (at most one in flight). Any thread but the writer's.

        Raises:
            RuntimeError: the writer is closed.
        """
        with self._lock:
            if backup:
                self._wait_for_backup_locked()
            if self._closed:
                raise RuntimeError(f"{self._name} is closed")
            self._pending += 1
            self._backups_pending += int(backup)
            self._start()
        self._jobs.put((job, backup))

    def wait_for_backup(self) -> None:
        """Wait until no backup is queued or running (any thread but the writer's)."""
        with self._lock:
            self._wait_for_backup_locked()

    def _wait_for_backup_locked(self) -> None:
        if not self._backups_pending:
            return
        started = time.perf_counter()
        self.waits += 1
        while self._backups_pending and not self._closed:
            self._idle.wait()
        self.wait_s += time.perf_counter() - started

    def run_now(self, job: Callable[[], None], *, backup: bool = False) -> None:
        """Queue `job` and wait until it has run (a state that cannot be captured apart
        from the live model is written while training waits)."""
        done = threading.Event()

        def run() -> None:
            try:
                job()
            finally:
                done.set()

        self.submit(run, backup=backup)
        done.wait()

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued job has run; False when `timeout_s` passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._lock:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout_s: float | None = None) -> None:
        """Run what is queued (up to `timeout_s`), then end the thread. Idempotent."""
        self.drain(timeout_s)
        with self._lock:
            self._closed = True
            self._idle.notify_all()
            thread = self._thread
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout_s)

    @property
    def in_flight(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return self._pending

    def _start(self) -> None:
        if self._thread is None:
            # A daemon: a process that exits (a restart, a failure) does not wait for a
            # persist that can no longer commit; what it leaves is a temporary directory.
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        _lower_priority()
        while True:
            item = self._jobs.get()
            if item is None:  # close()
                return
            job, backup = item
            started = time.perf_counter()
            try:
                job()
            except BaseException:  # a job reports its own errors; this keeps the thread
                logger.exception("a backup job raised")
            finally:
                with self._lock:
                    self._pending -= 1
                    if backup:
                        self._backups_pending -= 1
                        self.persist_s.append(time.perf_counter() - started)
                    self._idle.notify_all()


def _lower_priority() -> None:
    if not sys.platform.startswith("linux") or WRITER_NICENESS <= 0:
        return
    # On Linux a nice value belongs to a thread: this changes the writer's only.
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + WRITER_NICENESS)
