"""The worker's end of the protocol: an IO thread that talks to the coordinator.

The training thread never does I/O. It appends batch logs to in-memory
buffers and calls the few blocking methods here only where the protocol says
a worker waits: at join, at each epoch end, at train end, and in
`wait_window` when the window rule requires. Everything else (framing,
sending, heartbeats, reading decisions) happens on the IO thread's event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from distcb.core.config import Config
from distcb.core.decisions import Decision, PendingDecisions
from distcb.core.errors import CoordinatorLostError, DistcbError, ProtocolError
from distcb.core.messages import (
    Abort,
    BatchEntry,
    BatchFrame,
    EpochEnd,
    EpochReply,
    Heartbeat,
    Join,
    Message,
    Progress,
    Start,
    TrainEnd,
    TrainEndReply,
    WorkerFailed,
)
from distcb.core.transport import Connection, ConnectionClosed

Connector = Callable[[], Awaitable[Connection]]

_ACTIVE: set[WorkerLink] = set()
_ACTIVE_LOCK = threading.Lock()


def active_links() -> list[WorkerLink]:
    """Links of this process still open (the launcher reports a crash through them)."""
    with _ACTIVE_LOCK:
        return list(_ACTIVE)


class WorkerLink:
    """One worker's connection to its coordinator, driven from the training thread.

    Args:
        rank: this worker's rank; world_size: the number of workers.
        connect: coroutine function opening the transport connection.
        config: timeouts and limits (heartbeats, flush interval, frame size).
    """

    def __init__(self, *, rank: int, world_size: int, connect: Connector, config: Config):
        self.rank = rank
        self.world_size = world_size
        self.config = config
        self._connect = connect
        self._cond = threading.Condition()
        self._pending = PendingDecisions()
        self._replies: dict[str, Message] = {}
        self._lost: DistcbError | None = None
        self.abort_reason: str | None = None
        self._progress = (0, -1)  # (epoch, last processed step) as the coordinator said
        self.window_steps: int | None = None
        self.want_batch_logs = True
        self.histogram_freq = 0
        self.want_model_json = False
        # Batch buffers: written by the training thread (and Keras's batch-end pool), read by IO.
        self._epoch = 0
        self._begun: collections.deque[int] = collections.deque()
        self._ended: dict[int, BatchEntry] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing: asyncio.Event | None = None
        self._connection: Connection | None = None
        self._send_lock: asyncio.Lock | None = None
        self._kick: asyncio.Event | None = None
        self._kick_every = 32
        self._unsent = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._window_waits = 0
        self._window_wait_s = 0.0
        self._frames_sent = 0
        self._last_heard = time.monotonic()

    # ------------------------------------------------------------------ training thread

    def start(self, join: Join) -> Start:
        """Connect, join and wait for the go signal (blocking)."""
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run_loop,
            args=(join, ready),
            name=f"distcb-worker-{self.rank}-io",
            daemon=True,
        )
        self._thread.start()
        ready.wait()
        with _ACTIVE_LOCK:
            _ACTIVE.add(self)
        start = self._wait_reply(
            "start", self.config.connect_timeout_s + self.config.join_timeout_s, "the go signal"
        )
        assert isinstance(start, Start)
        self.window_steps = start.window_steps
        self.want_batch_logs = start.want_batch_logs
        self.histogram_freq = start.histogram_freq
        self.want_model_json = start.want_model_json
        self._kick_every = max(1, start.window_steps // 4) if start.window_steps else 32
        if self.want_batch_logs and self._loop is not None:
            self._loop.call_soon_threadsafe(self._start_flusher)
        with self._cond:
            self._pending.add(list(start.decisions))
        return start

    def begin_epoch(self, epoch: int) -> list[Decision]:
        """Decisions due before `epoch`'s first batch."""
        self._epoch = epoch
        self._begun.clear()
        self._ended.clear()
        self._raise_if_lost()
        with self._cond:
            return self._pending.take_epoch_begin(epoch)

    def begin_batch(self, step: int) -> list[Decision]:
        """Called from `on_train_batch_begin`: waits if the window rule says so, then returns
        the decisions due at this step (usually none: no lock taken then)."""
        if self._lost is not None:
            self._raise_if_lost()
        window = self.window_steps
        if window is not None:
            epoch, processed = self._progress
            if step > (processed if epoch == self._epoch else -1) + window:
                self._wait_window(step, window)
        if self.want_batch_logs:
            self._begun.append(step)
        if not len(self._pending):
            return []
        with self._cond:
            return self._pending.take_batch_begin(self._epoch, step)

    def end_batch(self, step: int, logs: dict[str, Any], samples: float | None) -> None:
        """Called from `on_train_batch_end` (any thread): buffer, and wake the IO thread
        only every `_kick_every` steps."""
        if not self.want_batch_logs:
            return
        self._ended[step] = BatchEntry(step, logs, samples)
        self._unsent += 1  # approximate when Keras runs this on its pool: harmless
        if self._unsent >= self._kick_every:
            self._unsent = 0
            loop, kick = self._loop, self._kick
            if loop is not None and kick is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: nothing to send
                    loop.call_soon_threadsafe(kick.set)

    def end_epoch(self, message: EpochEnd) -> list[Decision]:
        """Flush batch logs, send the epoch logs and wait for the coordinator's decisions."""
        self._submit(self._send_epoch_end(message))
        reply = self._wait_reply(
            f"epoch_reply:{message.epoch}", None, f"epoch {message.epoch}'s decisions"
        )
        assert isinstance(reply, EpochReply)
        with self._cond:
            self._pending.add(list(reply.decisions))
            return self._pending.take_epoch_end(message.epoch)

    def end_training(self) -> tuple[list[Decision], str | None]:
        """Send train end and wait for the last decisions; returns them and the job's error."""
        self._submit(self._send(TrainEnd(self.rank)))
        reply = self._wait_reply("train_end_reply", None, "the train-end decisions")
        assert isinstance(reply, TrainEndReply)
        with self._cond:
            decisions = self._pending.take_train_end() + list(reply.decisions)
        return decisions, reply.error

    def send(self, message: Message) -> Any:
        """Queue a message for the coordinator (non-blocking); returns a future of the send."""
        return self._submit(self._send(message))

    def fail(self, error: BaseException) -> None:
        """Tell the coordinator this worker's training raised, then close."""
        text = "".join(traceback.format_exception(error))
        message = WorkerFailed(self.rank, f"{type(error).__name__}: {error}", text)
        try:
            future = self._submit(self._send(message))
        except DistcbError:  # never connected, or already lost: nothing to tell
            future = None
        if future is not None:
            with contextlib.suppress(Exception):
                future.result(timeout=self.config.reply_timeout_s)
        self.close()

    def close(self) -> None:
        """Flush, close the connection and stop the IO thread (blocking, bounded)."""
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self)
        loop, closing = self._loop, self._closing
        if loop is not None and closing is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(closing.set)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.config.reply_timeout_s)

    # ------------------------------------------------------------------ waiting

    def _raise_if_lost(self) -> None:
        if self._lost is not None:
            raise self._lost

    def statistics(self) -> dict[str, float]:
        """How often this worker waited on the window rule, and for how long in all."""
        return {
            "window_waits": self._window_waits,
            "window_wait_s": self._window_wait_s,
            "frames_sent": self._frames_sent,
        }

    def _wait_window(self, step: int, window: int) -> None:
        started = time.perf_counter()
        self._window_waits += 1

        def may_go() -> bool:
            epoch, processed = self._progress
            known = processed if epoch == self._epoch else -1
            return step <= known + window or self._lost is not None or self.abort_reason is not None

        with self._cond:
            self._cond.wait_for(may_go)
        self._window_wait_s += time.perf_counter() - started
        self._raise_if_lost()

    def _wait_reply(self, key: str, timeout_s: float | None, what: str) -> Message:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while key not in self._replies:
                if self._lost is not None:
                    raise self._lost
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise CoordinatorLostError(
                        f"rank {self.rank}: no answer from the coordinator within {timeout_s:g} s "
                        f"while waiting for {what}"
                    )
                self._cond.wait(remaining)
            return self._replies.pop(key)

    def _set_lost(self, error: DistcbError) -> None:
        with self._cond:
            if self._lost is None:
                self._lost = error
            self._cond.notify_all()

    # ------------------------------------------------------------------ IO thread

    def _submit(self, coro: Any) -> Any:
        loop = self._loop
        if loop is None or loop.is_closed():
            coro.close()
            self._raise_if_lost()
            return None
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        future.add_done_callback(self._check_done)
        return future

    def _check_done(self, future: Any) -> None:
        # Any failure of work handed to the IO thread stops training with its reason.
        if not future.cancelled() and future.exception() is not None:
            self._set_lost(
                DistcbError(f"rank {self.rank}: the IO thread failed: {future.exception()!r}")
            )

    def _run_loop(self, join: Join, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._closing = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._kick = asyncio.Event()
        ready.set()
        try:
            loop.run_until_complete(self._main(join))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self, join: Join) -> None:
        assert self._closing is not None
        try:
            self._connection = await asyncio.wait_for(
                self._connect(), self.config.connect_timeout_s
            )
            await self._connection.send(join)
        except Exception as exc:
            self._set_lost(
                CoordinatorLostError(f"rank {self.rank}: could not reach the coordinator: {exc}")
            )
            return
        self._last_heard = time.monotonic()
        self._tasks += [
            asyncio.create_task(self._read(), name="distcb-read"),
            asyncio.create_task(self._heartbeat(), name="distcb-heartbeat"),
        ]
        try:
            await self._closing.wait()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush(), self.config.reply_timeout_s)
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._connection.close("worker finished")

    async def _read(self) -> None:
        assert self._connection is not None
        try:
            while True:
                message = await self._connection.receive()
                self._last_heard = time.monotonic()
                self._on_message(message)
        except (ConnectionClosed, DistcbError) as exc:
            self._set_lost(CoordinatorLostError(f"rank {self.rank}: lost the coordinator ({exc})"))

    def _on_message(self, message: Message) -> None:
        if isinstance(message, Heartbeat):
            return
        with self._cond:
            if isinstance(message, Progress):
                self._pending.add(list(message.decisions))
                self._progress = (message.epoch, message.processed_step)
            elif isinstance(message, EpochReply):
                self._replies[f"epoch_reply:{message.epoch}"] = message
            elif isinstance(message, Start | TrainEndReply):
                self._replies[message.type] = message
            elif isinstance(message, Abort):
                self.abort_reason = message.reason
                self._pending.add(list(message.decisions))
            self._cond.notify_all()

    async def _heartbeat(self) -> None:
        interval = self.config.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval)
            silent = time.monotonic() - self._last_heard
            if silent > self.config.heartbeat_timeout_s:
                self._set_lost(
                    CoordinatorLostError(
                        f"rank {self.rank}: heard nothing from the coordinator for {silent:.1f} s "
                        f"(Config.heartbeat_timeout_s={self.config.heartbeat_timeout_s:g})"
                    )
                )
                return
            await self._send(Heartbeat())

    def _start_flusher(self) -> None:
        if self._closing is not None and not self._closing.is_set():
            self._tasks.append(asyncio.create_task(self._flush_when_kicked(), name="distcb-flush"))

    async def _flush_when_kicked(self) -> None:
        # Wakes when the training thread has buffered enough steps, or after
        # flush_max_delay_s at the latest: a timer every few ms would take the
        # GIL from the training thread hundreds of times a second.
        assert self._kick is not None
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), self.config.flush_max_delay_s)
                self._kick.clear()
                await self._flush()
        except Exception as exc:
            self._set_lost(DistcbError(f"rank {self.rank}: sending batch logs failed: {exc!r}"))

    async def _flush(self) -> None:
        """Send buffered batch logs in step order, as far as they are contiguous."""
        frames = self._frames(self._epoch, self._ready_entries())
        if frames:
            await self._send(*frames)

    def _frames(self, epoch: int, entries: list[BatchEntry]) -> list[BatchFrame]:
        limit = self.config.max_frame_entries
        frames = [
            BatchFrame(self.rank, epoch, tuple(entries[i : i + limit]))
            for i in range(0, len(entries), limit)
        ]
        self._frames_sent += len(frames)
        return frames

    def _ready_entries(self) -> list[BatchEntry]:
        # Keras may run batch-end hooks on a thread pool, out of order: release a
        # step only once every step begun before it has ended. With
        # steps_per_execution > 1, the end of the execution begun at b is the
        # ended step in [b, next begun step).
        out: list[BatchEntry] = []
        while self._begun:
            first = self._begun[0]
            upper = self._begun[1] if len(self._begun) > 1 else None
            candidates = [
                s for s in list(self._ended) if s >= first and (upper is None or s < upper)
            ]
            if not candidates:
                break
            step = min(candidates)
            out.append(self._ended.pop(step))
            self._begun.popleft()
        return out

    async def _send_epoch_end(self, message: EpochEnd) -> None:
        entries = self._ready_entries()
        # Entries still unmatched (no begin seen) go out in step order before the epoch end.
        entries += [self._ended.pop(s) for s in sorted(self._ended)]
        self._begun.clear()
        # One send: no other frame can slip in between the last batch logs and the epoch end.
        await self._send(*self._frames(message.epoch, entries), message)

    async def _send(self, *messages: Message) -> None:
        """Send `messages` in order, back to back (no other send in between)."""
        assert self._send_lock is not None
        connection = self._connection
        if connection is None:
            return
        async with self._send_lock:
            for message in messages:
                if not await self._send_one(connection, message):
                    return

    async def _send_one(self, connection: Connection, message: Message) -> bool:
        """Send one message; on failure stop training with the reason and return False."""
        try:
            await asyncio.wait_for(connection.send(message), self.config.reply_timeout_s)
            return True
        except (ConnectionClosed, TimeoutError) as exc:
            self._set_lost(
                CoordinatorLostError(
                    f"rank {self.rank}: could not send to the coordinator ({exc!r})"
                )
            )
        except Exception as exc:
            # Something this worker cannot encode (a log value of an unknown type, a
            # tensor that fails to read): training stops with the reason rather than
            # the message vanishing and the worker waiting for an answer forever.
            self._set_lost(
                ProtocolError(f"rank {self.rank}: could not send a {message.type!r}: {exc!r}")
            )
        return False
