"""The workers of one job: who joined, who is still live, and the channel to each.

The roster reads every worker connection and turns what arrives into events
for the coordinator's engine: ``(rank, message)`` for a message, `WorkerLost`
when a connection breaks, goes silent or misbehaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distcb.core.config import Config
from distcb.core.errors import ProtocolError, WorkerLostError
from distcb.core.messages import Heartbeat, Join, Message
from distcb.core.transport import Connection, ConnectionClosed

logger = logging.getLogger("distcb.coordinator")


@dataclass(frozen=True)
class WorkerLost:
    """Event: worker `rank` is gone."""

    rank: int
    error: WorkerLostError


@dataclass
class WorkerEntry:
    rank: int
    connection: Connection
    params: dict[str, Any]
    last_seen: float
    train_ended: bool = False
    done: bool = False
    report: dict[str, Any] | None = None


class Roster:
    """Joins, connection loops, heartbeats and sends for `world_size` workers.

    Args:
        world_size: the number of ranks expected.
        config: timeouts.
        post: puts an event in the coordinator's queue.
        accepting: whether joins are still accepted (before training starts).
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
        self.live: set[int] = set()
        self.all_joined = asyncio.Event()
        self.never_joined: dict[int, WorkerLostError] = {}

    async def serve(self, connection: Connection) -> None:
        """Read one worker connection until it closes. Never raises: a bad peer closes its
        own connection only (and, once joined, counts as a lost worker)."""
        try:
            first = await asyncio.wait_for(connection.receive(), self.config.join_timeout_s)
        except (TimeoutError, ConnectionClosed, ProtocolError) as exc:
            await connection.close(f"no valid join: {exc}")
            return
        try:
            if not isinstance(first, Join):
                raise ProtocolError(f"the first message must be a join, received {first.type!r}")
            self._admit(first, connection)
        except ProtocolError as exc:
            logger.warning("rejected %s: %s", connection.peer, exc)
            await connection.close(str(exc))
            return
        rank = first.rank
        try:
            while True:
                message = await connection.receive()
                self.workers[rank].last_seen = time.monotonic()
                if isinstance(message, Heartbeat):
                    continue
                claimed = getattr(message, "rank", rank)
                if claimed != rank or isinstance(message, Join):
                    raise ProtocolError(
                        f"rank {rank}'s connection sent {message.type!r} claiming rank {claimed}"
                    )
                self._post((rank, message))
        except Exception as exc:  # a closed channel, a bad message, or a transport's own bug
            if not isinstance(exc, ConnectionClosed | ProtocolError):
                logger.exception("rank %d's connection failed", rank)
            if not self.workers[rank].done:
                self._post(WorkerLost(rank, WorkerLostError(rank, _lost_reason(exc))))
            with contextlib.suppress(ConnectionClosed):
                await connection.close(str(exc))

    def _admit(self, join: Join, connection: Connection) -> None:
        if not self._accepting():
            raise ProtocolError(
                f"rank {join.rank} joined after training started; rejoining is not supported"
            )
        if join.world_size != self.world_size:
            raise ProtocolError(
                f"rank {join.rank} says world_size={join.world_size}, the coordinator expects "
                f"{self.world_size}"
            )
        if join.rank in self.workers:
            raise ProtocolError(f"rank {join.rank} joined twice")
        self.workers[join.rank] = WorkerEntry(join.rank, connection, join.params, time.monotonic())
        self.live.add(join.rank)
        if len(self.workers) == self.world_size:
            self.all_joined.set()

    def report_lost(self, rank: int, reason: str, traceback_text: str | None = None) -> None:
        worker = self.workers.get(rank)
        if worker is not None and worker.done:
            return
        error = WorkerLostError(rank, reason, traceback_text)
        if worker is None:
            # It never joined: the join barrier cannot complete; fail it now.
            self.never_joined[rank] = error
            self.all_joined.set()
            return
        self._post(WorkerLost(rank, error))

    def training(self) -> set[int]:
        """Live ranks still in `fit`: those the epoch barrier and the batch merge wait for."""
        return {r for r in self.live if not self.workers[r].train_ended}

    def status(self) -> dict[str, list[int]]:
        return {"joined": sorted(self.workers), "live": sorted(self.live)}

    def missing(self) -> set[int]:
        return set(range(self.world_size)) - set(self.workers)

    def all_live(self, predicate: Callable[[WorkerEntry], bool]) -> bool:
        return all(predicate(self.workers[r]) for r in self.live)

    async def drop(self, rank: int, reason: str) -> None:
        """Count `rank` as lost and close its connection."""
        self.live.discard(rank)
        with contextlib.suppress(ConnectionClosed):
            await self.workers[rank].connection.close(reason)

    async def broadcast(self, message: Message) -> None:
        """Send to every live worker; one that cannot be reached becomes a WorkerLost event."""
        ranks = sorted(self.live)
        results = await asyncio.gather(
            *(self._send(r, message) for r in ranks), return_exceptions=True
        )
        for rank, result in zip(ranks, results, strict=True):
            if isinstance(result, BaseException):
                self._post(
                    WorkerLost(rank, WorkerLostError(rank, f"could not be reached: {result}"))
                )

    async def _send(self, rank: int, message: Message) -> None:
        await asyncio.wait_for(
            self.workers[rank].connection.send(message), self.config.reply_timeout_s
        )

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
                if silent > self.config.heartbeat_timeout_s and not worker.done:
                    reason = (
                        f"sent nothing for {silent:.1f} s (Config.heartbeat_timeout_s="
                        f"{self.config.heartbeat_timeout_s:g})"
                    )
                    self._post(WorkerLost(rank, WorkerLostError(rank, reason)))
                    worker.last_seen = float("inf")  # report once

    async def close_all(self) -> None:
        for worker in self.workers.values():
            with contextlib.suppress(Exception):
                await worker.connection.close("job finished")

    def merged_params(self) -> dict[str, Any]:
        """What callbacks see as `params`: the chief's fit parameters plus job-wide facts."""
        chief = self.workers[0].params
        for rank, worker in sorted(self.workers.items()):
            if worker.params.get("epochs") != chief.get("epochs"):
                raise ProtocolError(
                    f"rank {rank} trains for epochs={worker.params.get('epochs')!r} but the chief "
                    f"for epochs={chief.get('epochs')!r}; every worker must run the same epochs"
                )
        samples = [w.params.get("samples") for w in self.workers.values()]
        directions: dict[str, str] = {}
        for worker in self.workers.values():
            directions.update(worker.params.get("directions") or {})
        return {
            "verbose": 1 if chief.get("verbose") is None else chief.get("verbose"),
            "epochs": chief.get("epochs"),
            "initial_epoch": chief.get("initial_epoch", 0),
            "steps": chief.get("steps"),
            "num_workers": self.world_size,
            "samples": sum(samples) if all(s is not None for s in samples) else None,
            "batch_size": chief.get("batch_size"),
            "metrics": list(chief.get("metrics") or []),
            "directions": directions,
            "flavour": chief.get("flavour"),
        }


def _lost_reason(exc: BaseException) -> str:
    if isinstance(exc, ProtocolError):
        return f"sent a bad message: {exc}"
    return f"disconnected ({exc})"
