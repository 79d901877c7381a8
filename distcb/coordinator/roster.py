"""The workers of one job: who joined, the protocol state of each, the channel to each.

The roster reads every worker connection and turns what arrives into events
for the coordinator's engine: ``(rank, message)`` for a message that is valid
in that worker's state, `WorkerLost` when a connection breaks, goes silent or
misbehaves. It checks everything a peer controls before the engine sees it:
the per-rank protocol state (`ALLOWED`), the claimed rank, and the bounds of
`Config` (entries per frame, steps ahead of the coordinator).

Per-rank protocol states and the messages valid in each: `distcb.coordinator.ranks`.

A join is valid only as a connection's first message, and only while the job
is joining (or, during the join phase, to replace a rank's dropped connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from distcb.coordinator.events import WorkerLost
from distcb.coordinator.ranks import (
    ALLOWED,
    RankState,
    WorkerEntry,
    check_message,
    lost_reason,
    merged_params,
)
from distcb.protocol import close_codes
from distcb.protocol.config import Config
from distcb.protocol.connection import Connection
from distcb.protocol.errors import ConnectionClosed, ProtocolError, WorkerLostError
from distcb.protocol.log_limit import LogLimiter
from distcb.protocol.messages import (
    BatchFrame,
    Heartbeat,
    Join,
    Message,
)

logger = logging.getLogger("distcb.coordinator")

__all__ = ["ALLOWED", "RankState", "Roster", "WorkerEntry", "WorkerLost"]  # (moved, kept here)


class Roster:
    """Joins, per-rank protocol states, connection loops, heartbeats and sends.

    Args:
        world_size: the number of ranks expected.
        config: timeouts and bounds.
        post: puts an event in the coordinator's queue.
        accepting: whether joins are still accepted (before training starts).
        flow_window: the steps a rank may report beyond the last processed step
            (the coordinator's `processed_step()`); None while no batch logs are wanted.
    """

    def __init__(
        self,
        world_size: int,
        config: Config,
        post: Callable[[Any], None],
        accepting: Callable[[], bool],
    ):
        self.world_size = world_size
        self.config = config
        self._post = post
        self._accepting = accepting
        self.workers: dict[int, WorkerEntry] = {}
        self._queued: dict[int, int] = {}  # rank -> messages posted, not yet taken
        self._log_limiter = LogLimiter(logger, config.rejection_log_interval_s)
        self.live: set[int] = set()
        self._ended: set[int] = set()  # ranks whose fit ended (train_ended): see `training`
        self.all_joined = asyncio.Event()
        self.never_joined: dict[int, WorkerLostError] = {}
        self.flow_window: int | None = None
        self.processed_step: Callable[[], int] = lambda: -1
        # When the coordinator last made progress while it waits for workers (None: it is
        # not waiting for them): the stall watchdog's reference (Config.stall_timeout_s).
        self.waiting_since: Callable[[], float | None] = lambda: None

    # ------------------------------------------------------------------ connections

    async def serve(self, connection: Connection) -> None:
        """Read one worker connection until it closes. Never raises: a bad peer closes its
        own connection only (and, once joined, counts as a lost worker)."""
        try:
            first = await asyncio.wait_for(connection.receive(), self.config.join_timeout_s)
        except (TimeoutError, ConnectionClosed, ProtocolError) as exc:
            with contextlib.suppress(ConnectionClosed):
                await connection.close(f"no valid join: {exc}")
            return
        try:
            if not isinstance(first, Join):
                raise ProtocolError(f"the first message must be a join, received {first.type!r}")
            self.admit(first, connection)
        except ProtocolError as exc:
            self._log_limiter.log(logging.WARNING, "join", "rejected %s: %s", connection.peer, exc)
            with contextlib.suppress(ConnectionClosed):
                await connection.close(str(exc))
            return
        rank = first.rank
        entry = self.workers[rank]
        try:
            while True:
                message = await connection.receive()
                entry.last_seen = time.monotonic()
                if isinstance(message, Heartbeat):
                    continue
                entry.last_active = entry.last_seen
                self._post(self.take_in(entry, message))
        except Exception as exc:  # a closed channel, a bad message, or a transport's own bug
            if not isinstance(exc, ConnectionClosed | ProtocolError):
                logger.exception("rank %d's connection failed", rank)
            if self.workers.get(rank) is entry:
                self._on_connection_end(entry, exc)
            entry.disconnected.set()
            code = exc.close_code if isinstance(exc, ProtocolError) else close_codes.NORMAL
            with contextlib.suppress(ConnectionClosed):
                await connection.close(str(exc), code=code)

    def take_in(self, entry: WorkerEntry, message: Message) -> tuple[int, Message]:
        """The event for `message` from `entry`'s rank, once valid (no I/O: the connection
        loop calls it, and so can a test of the machine).

        Raises:
            ProtocolError: the message is not valid from that rank now.
        """
        check_message(
            entry,
            message,
            flow_window=self.flow_window,
            processed_step=self.processed_step(),
            max_frame_entries=self.config.max_frame_entries,
        )
        if entry.state is RankState.TRAIN_ENDED or entry.state is RankState.DONE:
            self._ended.add(entry.rank)
        self._count_queued(entry.rank, message)
        return (entry.rank, message)

    def _count_queued(self, rank: int, message: Message) -> None:
        """Bound what one rank has waiting for the engine (a callback may hold it for long).

        Raises:
            ProtocolError: over `Config.max_queued_messages` (batch frames aside: the
                window bounds them).
        """
        if isinstance(message, BatchFrame):
            return
        queued = self._queued.get(rank, 0) + 1
        limit = self.config.max_queued_messages
        if queued > limit:
            raise ProtocolError(
                f"rank {rank} has {limit} messages waiting for the coordinator "
                f"(Config.max_queued_messages={limit}) and sent another ({message.type!r})"
            )
        self._queued[rank] = queued

    def taken(self, event: Any) -> None:
        """The engine took `event` off its queue (see `_count_queued`)."""
        if isinstance(event, tuple) and not isinstance(event[1], BatchFrame):
            rank = event[0]
            self._queued[rank] = max(0, self._queued.get(rank, 0) - 1)

    def _on_connection_end(self, entry: WorkerEntry, exc: BaseException) -> None:
        if entry.done:
            return
        if entry.state is RankState.JOINED and self._accepting():
            # Still joining: the rank may connect again (a worker that retried). Until it
            # does, it is away (nothing is sent to it, the join waits for it) unless it
            # misbehaved: then the next send to it fails it, as once training.
            entry.dropped = True
            entry.away = not isinstance(exc, ProtocolError)
            return
        self._post(WorkerLost(entry.rank, WorkerLostError(entry.rank, lost_reason(exc))))

    def admit(self, join: Join, connection: Connection) -> None:
        """Take `join` in (ProtocolError: refused)."""
        if not self._accepting():
            raise ProtocolError(
                f"rank {join.rank} joined after training started; rejoining is not supported"
            )
        if join.world_size != self.world_size:
            raise ProtocolError(
                f"rank {join.rank} says world_size={join.world_size}, the coordinator expects "
                f"{self.world_size}"
            )
        previous = self.workers.get(join.rank)
        if previous is not None and not previous.dropped:
            raise ProtocolError(f"rank {join.rank} joined twice (its first connection is open)")
        now = time.monotonic()
        self.workers[join.rank] = WorkerEntry(join.rank, connection, join.params, now, now)
        self.live.add(join.rank)
        if len(self.missing()) == 0:
            self.all_joined.set()

    # ------------------------------------------------------------------ state changes by the engine

    def begin_training(self) -> None:
        for rank in self.live:
            self.workers[rank].state = RankState.TRAINING

    def begin_epoch(self, epoch: int) -> None:
        """The epoch reply went out: ranks at the barrier train epoch `epoch` now."""
        for rank in self.live:
            worker = self.workers[rank]
            worker.epoch = epoch
            worker.last_step = -1
            if worker.state is RankState.AT_BARRIER:
                worker.state = RankState.TRAINING

    def train_end_replied(self) -> None:
        for rank in self.live:
            self.workers[rank].ended_reply_sent = True

    async def wait_disconnected(self, rank: int, timeout_s: float) -> None:
        """Until worker `rank`'s connection has been read to its end (bounded): what it sent
        before its process exited has then been taken in."""
        worker = self.workers.get(rank)
        if worker is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await worker.disconnected.wait()

    def report_lost(
        self,
        rank: int,
        reason: str,
        traceback_text: str | None = None,
        *,
        retryable: bool = True,
        attempt: int | None = None,
    ) -> None:
        """A launcher saw worker `rank` die (exit code, dead actor); `attempt`: the attempt
        the launcher started it for (see `Attempt.concerns`)."""
        worker = self.workers.get(rank)
        if worker is not None and worker.done:
            return
        error = WorkerLostError(rank, reason, traceback_text, retryable=retryable)
        if worker is None or (worker.dropped and self._accepting()):
            # It never joined (for good): the join barrier cannot complete; fail it now.
            self.never_joined[rank] = error
            self.all_joined.set()
            return
        self._post(WorkerLost(rank, error, attempt))

    def training(self) -> set[int]:
        """Live ranks still in `fit`: those the epoch barrier and the batch merge wait for.

        A set difference, not a scan of the entries: the engine asks at every epoch end
        and every merge, and with hundreds of workers a scan per message adds up."""
        return self.live - self._ended

    def missing(self) -> set[int]:
        """Ranks not joined, or whose connection dropped while joining (they may come back)."""
        joined = {r for r, w in self.workers.items() if not w.away}
        return set(range(self.world_size)) - joined

    def _away(self, rank: int) -> bool:
        """Its connection dropped while the job is still joining: nothing is sent to it, and
        its silence is no loss (the join timeout bounds its absence)."""
        worker = self.workers.get(rank)
        return worker is not None and worker.away and self._accepting()

    def all_live(self, predicate: Callable[[WorkerEntry], bool]) -> bool:
        return all(predicate(self.workers[r]) for r in self.live)

    def mark_lost(self, rank: int, reason: str) -> None:
        """Count `rank` as lost (its connection is closed by `close`)."""
        self.live.discard(rank)
        self.workers[rank].lost_reason = reason

    async def close(self, rank: int, reason: str) -> None:
        """Close `rank`'s connection."""
        with contextlib.suppress(ConnectionClosed):
            await self.workers[rank].connection.close(reason)

    # ------------------------------------------------------------------ sending

    async def broadcast(self, message: Message) -> None:
        """Send to every live worker; one that cannot be reached becomes a WorkerLost event."""
        ranks = [r for r in sorted(self.live) if not self._away(r)]
        results = await asyncio.gather(
            *(self._send(r, message) for r in ranks), return_exceptions=True
        )
        for rank, result in zip(ranks, results, strict=True):
            if isinstance(result, BaseException):
                self._post(
                    WorkerLost(rank, WorkerLostError(rank, f"could not be reached: {result}"))
                )

    async def _send(self, rank: int, message: Message) -> None:
        # asyncio.timeout, not wait_for: no second task per worker and message.
        async with asyncio.timeout(self.config.reply_timeout_s):
            await self.workers[rank].connection.send(message)

    async def watch_heartbeats(self) -> None:
        """Say we are alive every interval; report workers silent past the timeout."""
        interval = self.config.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval)
            await self.broadcast(Heartbeat())
            now = time.monotonic()
            for rank in list(self.live):
                worker = self.workers[rank]
                silent = now - worker.last_seen
                if (
                    silent > self.config.heartbeat_timeout_s
                    and not worker.done
                    and not worker.silence_reported
                    and not self._away(rank)
                ):
                    reason = (
                        f"sent nothing for {silent:.1f} s (Config.heartbeat_timeout_s="
                        f"{self.config.heartbeat_timeout_s:g})"
                    )
                    self._post(WorkerLost(rank, WorkerLostError(rank, reason)))
                    worker.silence_reported = True
            self._check_stall(now)

    def _check_stall(self, now: float) -> None:
        """Report the ranks a barrier waits for that sent nothing but heartbeats for longer
        than `Config.stall_timeout_s` while the coordinator made no progress."""
        since = self.waiting_since()
        limit = self.config.stall_timeout_s
        if since is None or now - since <= limit:
            return
        for rank in sorted(self.live):
            worker = self.workers[rank]
            idle = now - worker.last_active
            if worker.state is not RankState.TRAINING or worker.silence_reported or idle <= limit:
                continue
            reason = (
                f"made no progress for {idle:.0f} s while the coordinator waited for it (epoch "
                f"{worker.epoch}, last step {worker.last_step}; it sent only heartbeats, so its "
                f"training thread is stuck): over Config.stall_timeout_s={limit:g}"
            )
            self._post(WorkerLost(rank, WorkerLostError(rank, reason)))
            worker.silence_reported = True

    async def close_all(self) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(Exception):
                await worker.connection.close("job finished")

    # ------------------------------------------------------------------ views

    def merged_params(self) -> dict[str, Any]:
        """What callbacks see as `params` (`ranks.merged_params`).

        Raises:
            ProtocolError: the workers disagree on what must be common (epochs).
        """
        return merged_params(self.workers, self.world_size)

    def status(self) -> list[dict[str, Any]]:
        """One entry per rank that joined, for ``/status``."""
        now = time.monotonic()
        out = []
        for rank, worker in sorted(self.workers.items()):
            state = worker.state.value if rank in self.live else "lost"
            if worker.away and self._accepting():
                state = "away"  # its connection dropped while joining: it may come back
            age = now - worker.last_seen
            out.append(
                {
                    "rank": rank,
                    "host": worker.params.host,
                    "state": state,
                    "epoch": worker.epoch,
                    "step": worker.last_step,
                    "heartbeat_age_s": round(age, 3),
                    "lost_reason": worker.lost_reason,
                }
            )
        return out
