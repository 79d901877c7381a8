"""A worker's session with its coordinator: the protocol driven over one connection.

`WorkerSession` lives on one event loop. It connects and joins, reads what
the coordinator sends into the `WorkerProtocol`, says it is alive, sends
batch frames when enough steps are buffered, and offers the few waits the
protocol has: the go signal, the window rule, the epoch barrier, the train
end. Decisions are applied through the `DecisionApplier`.

Two drivers share it, so that simulated runs test the code real workers run:

* `distcb.worker.threaded.ThreadedSession` runs the loop on an IO thread for
  a Keras training thread, which never does I/O and blocks only at the waits;
* `distcb.testing`'s scripted workers await it directly.

Methods marked *any thread* are cheap and may be called from the training
thread (or Keras's batch-end pool) while the loop runs elsewhere.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from distcb.protocol.config import Config
from distcb.protocol.connection import Connection
from distcb.protocol.decisions import Decision
from distcb.protocol.errors import (
    ConnectionClosed,
    CoordinatorLostError,
    DistcbError,
    ProtocolError,
)
from distcb.protocol.messages import (
    Done,
    EpochEnd,
    Heartbeat,
    JoinParams,
    Message,
    Start,
    WorkerFailed,
)
from distcb.worker.apply import DecisionApplier, DecisionTarget
from distcb.worker.backup import BackupStore
from distcb.worker.batches import BatchBuffer
from distcb.worker.protocol import WorkerProtocol

Connector = Callable[[], Awaitable[Connection]]


class WorkerSession:
    """One worker's end of the protocol.

    Args:
        rank, world_size: who the worker is.
        connect: coroutine function opening the transport connection.
        config: timeouts and limits (heartbeats, flush delay, frame size).
        target: what decisions act on (the worker's model).
        store: where this worker's backups go (None: no run directory, no backups).
        record_steps: keep what the worker knew at every step it began (tests).
    """

    def __init__(
        self,
        *,
        rank: int,
        world_size: int,
        connect: Connector,
        config: Config,
        target: DecisionTarget,
        store: BackupStore | None = None,
        record_steps: bool = False,
    ):
        self.rank = rank
        self.config = config
        self.protocol = WorkerProtocol(rank, world_size, record_steps=record_steps)
        self.applier = DecisionApplier(target, rank, store, report=self.send_nowait)
        self.buffer = BatchBuffer(rank, config.max_frame_entries)
        self._connect = connect
        self._connection: Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._changed: asyncio.Condition | None = None
        self._send_lock: asyncio.Lock | None = None
        self._kick: asyncio.Event | None = None
        self._kick_every = 32
        self._unsent = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._outbox: collections.deque[Message] = collections.deque()
        self._last_heard = time.monotonic()
        self._closed = False
        self.window_waits = 0
        self.window_wait_s = 0.0

    # ------------------------------------------------------------------ on the loop

    async def open(self, params: JoinParams) -> Start:
        """Connect, join and wait for the go signal.

        Raises:
            CoordinatorLostError: the coordinator could not be reached, went away, or the
                job failed before it started.
        """
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._changed = asyncio.Condition()
        self._send_lock = asyncio.Lock()
        self._kick = asyncio.Event()
        join = self.protocol.join(params)
        try:
            self._connection = await asyncio.wait_for(
                self._connect(), self.config.connect_timeout_s
            )
        except Exception as exc:
            error = CoordinatorLostError(
                f"rank {self.rank}: could not reach the coordinator: {exc}"
            )
            self.protocol.lose(error)
            raise error from None
        await self._send(join)
        self._last_heard = time.monotonic()
        self._spawn(self._read(), "distcb-read")
        self._spawn(self._heartbeat(), "distcb-heartbeat")
        await self._wait(
            self.protocol.start_ready,
            timeout_s=self.config.join_timeout_s + self.config.reply_timeout_s,
            what="the go signal",
        )
        start = self.protocol.take_start()
        self.applier.persist_snapshots = start.persist_snapshots
        window = start.ahead_steps
        self._kick_every = max(1, window // 4) if window else 32
        if start.want_batch_logs:
            self._spawn(self._flush_when_kicked(), "distcb-flush")
        return start

    async def begin_batch(self, step: int) -> list[Decision]:
        """`begin_batch_nowait`, waiting first if the window rule says so."""
        if not self.protocol.may_begin(step):
            started = time.perf_counter()
            self.window_waits += 1
            await self._wait(lambda: self.protocol.may_begin(step), None, "batch progress")
            self.window_wait_s += time.perf_counter() - started
        decisions = self.begin_batch_nowait(step)
        assert decisions is not None
        return decisions

    async def end_epoch(self, message: EpochEnd) -> list[Decision]:
        """Send the epoch's last batch logs and its epoch logs; wait for the barrier's
        decisions (no timeout: a slow worker is fine while heartbeats flow)."""
        self.protocol.end_epoch(message)
        frames = self.buffer.take_frames(final=True)
        # One send: no other frame can slip in between the last batch logs and the epoch end.
        await self._send(*frames, message)
        await self._wait(
            self.protocol.epoch_reply_ready, None, f"epoch {message.epoch}'s decisions"
        )
        return self.protocol.finish_epoch()

    async def end_training(self) -> tuple[list[Decision], str | None]:
        """Send the train end; returns the last decisions and the job's error (or None)."""
        # The last barrier's backup is reported first: the barrier can then commit.
        await asyncio.to_thread(self.applier.drain)
        await self._send(self.protocol.end_training())
        await self._wait(self.protocol.train_end_ready, None, "the train-end decisions")
        return self.protocol.finish_training()

    async def flush(self) -> None:
        """Wait until every backup taken so far is persisted, and send what is queued."""
        await asyncio.to_thread(self.applier.drain)
        await self._send()

    async def finish(self, report: dict[str, Any]) -> None:
        """Say goodbye with this worker's report, then close."""
        await asyncio.to_thread(self.applier.drain)
        await self._send(Done(rank=self.rank, report=report))
        await self.close()

    async def fail(self, error: BaseException) -> None:
        """Tell the coordinator this worker's training raised, then close."""
        if self._connection is not None and self.protocol.lost is None:
            text = "".join(traceback.format_exception(error))
            await self._send(
                WorkerFailed(
                    rank=self.rank,
                    error=f"{type(error).__name__}: {error}"[:4096],
                    traceback=text[-200_000:],
                )
            )
        await self.close()

    async def close(self) -> None:
        """Cancel and await this session's tasks, then close the connection."""
        if self._closed:
            return
        self._closed = True
        # A persist in flight finishes before this worker is gone: a restarted attempt
        # must never find a writer of the ended one still at work in its directory.
        await asyncio.to_thread(self.applier.close, self.config.reply_timeout_s)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close("worker finished")

    # ------------------------------------------------------------------ any thread

    def begin_epoch(self, epoch: int) -> list[Decision]:
        """Decisions due before `epoch`'s first batch (any thread)."""
        decisions = self.protocol.begin_epoch(epoch)
        self.buffer.reset(epoch)
        return decisions

    def begin_batch_nowait(self, step: int) -> list[Decision] | None:
        """The decisions due at `step`, or None when the window rule says wait (any thread)."""
        protocol = self.protocol
        if not protocol.may_begin(step):
            return None
        decisions = protocol.begin_batch(step)
        if protocol.want_batch_logs:
            self.buffer.begin(step)
        return decisions

    def end_batch(self, step: int, logs: dict[str, Any], samples: float | None) -> None:
        """Buffer a step's logs; wake the sender every few steps only (any thread)."""
        if not self.protocol.want_batch_logs:
            return
        self.buffer.end(step, logs, samples)
        self._unsent += 1  # approximate when Keras runs this on its pool: harmless
        if self._unsent >= self._kick_every:
            self._unsent = 0
            self._call_soon(self._kick_now)

    def apply(self, decisions: list[Decision], step: int) -> None:
        """Carry out decisions on the target (the training thread: models live there)."""
        if not decisions:
            return
        reports = self.applier.apply(
            decisions,
            epoch=self.protocol.epoch,
            step=step,
            max_step_begun=self.protocol.max_step_begun,
        )
        for report in reports:
            self.send_nowait(report)

    def send_nowait(self, message: Message) -> None:
        """Queue a message for the coordinator (any thread). It goes out before anything
        sent after this call returns (a save report before the next epoch end)."""
        self._outbox.append(message)
        self._call_soon(lambda: self._spawn(self._send(), "distcb-send"))

    def statistics(self) -> dict[str, float]:
        """How often this worker waited on the window rule, for how long, frames sent; how
        often and how long training waited for a previous backup to be persisted."""
        writer = self.applier.writer
        return {
            "window_waits": self.window_waits,
            "window_wait_s": self.window_wait_s,
            "frames_sent": self.buffer.frames_made,
            "backup_waits": writer.waits,
            "backup_wait_s": writer.wait_s,
        }

    # ------------------------------------------------------------------ internals

    def _call_soon(self, fn: Callable[[], Any]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing to send
                loop.call_soon_threadsafe(fn)

    def _kick_now(self) -> None:
        if self._kick is not None:
            self._kick.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        if self._closed:
            coro.close()
            return
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A failure of the IO side stops training with its reason.
            self._lose(
                DistcbError(f"rank {self.rank}: the worker's IO failed: {task.exception()!r}")
            )

    async def _wait(self, ready: Callable[[], bool], timeout_s: float | None, what: str) -> None:
        assert self._changed is not None
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(ready)
        except TimeoutError:
            self._lose(
                CoordinatorLostError(
                    f"rank {self.rank}: no answer from the coordinator within {timeout_s:g} s "
                    f"while waiting for {what}"
                )
            )
        if self.protocol.lost is not None:
            raise self.protocol.lost

    def _lose(self, error: DistcbError) -> None:
        self.protocol.lose(error)
        if self._loop is not None and not self._loop.is_closed():
            self._call_soon(lambda: self._spawn(self._notify(), "distcb-notify"))

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def _read(self) -> None:
        assert self._connection is not None
        try:
            while True:
                message = await self._connection.receive()
                self._last_heard = time.monotonic()
                self.protocol.receive(message)
                if not isinstance(message, Heartbeat):
                    await self._notify()
        except (ConnectionClosed, DistcbError) as exc:
            what = "broke the protocol" if isinstance(exc, ProtocolError) else "was lost"
            self._lose(CoordinatorLostError(f"rank {self.rank}: the coordinator {what} ({exc})"))

    async def _heartbeat(self) -> None:
        interval = self.config.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval)
            silent = time.monotonic() - self._last_heard
            if silent > self.config.heartbeat_timeout_s:
                self._lose(
                    CoordinatorLostError(
                        f"rank {self.rank}: heard nothing from the coordinator for {silent:.1f} s "
                        f"(Config.heartbeat_timeout_s={self.config.heartbeat_timeout_s:g})"
                    )
                )
                return
            await self._send(Heartbeat())

    async def _flush_when_kicked(self) -> None:
        # Wakes when the training thread has buffered enough steps, or after
        # flush_max_delay_s at the latest: a timer every few ms would take the
        # GIL from the training thread hundreds of times a second.
        assert self._kick is not None
        while True:
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for can swallow a cancel
            # that arrives as the kick fires, and this task would then never end.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.flush_max_delay_s):
                    await self._kick.wait()
            self._kick.clear()
            frames = self.buffer.take_frames()
            if frames:
                await self._send(*frames)

    async def _send(self, *messages: Message) -> None:
        """Send what `send_nowait` queued, then `messages`, in order, back to back; a
        failure loses the coordinator."""
        assert self._send_lock is not None
        connection = self._connection
        if connection is None:
            return
        async with self._send_lock:
            queued = []
            while self._outbox:
                queued.append(self._outbox.popleft())
            for message in (*queued, *messages):
                if self.protocol.lost is not None:
                    return
                try:
                    async with asyncio.timeout(self.config.reply_timeout_s):
                        await connection.send(message)
                except (ConnectionClosed, TimeoutError) as exc:
                    self._lose(
                        CoordinatorLostError(
                            f"rank {self.rank}: could not send to the coordinator ({exc!r})"
                        )
                    )
                    return
                except Exception as exc:
                    # Something this worker cannot encode (a log value of an unknown
                    # type): training stops with the reason rather than the message
                    # vanishing and the worker waiting for an answer forever.
                    self._lose(
                        ProtocolError(f"rank {self.rank}: could not send {message.type!r}: {exc}")
                    )
                    return
