"""Ray transport, the worker's end: a connection to a coordinator actor, through actor calls.

    connection = await connect(f"ray:{name}", token, config=config)   # WorkerCallback does this

The coordinator actor itself (`distcb.launch.ray_actor`) answers these calls
with `distcb.transport.ray_channel.ChannelHub`.

Wire: every message travels as the MessagePack bytes of
`distcb.protocol.messages.encode` (Ray passes bytes as they are; our messages
are never pickled), checked against `Config.max_message_bytes` and decoded by
the validating decoder before it reaches the coordinator. A worker pushes what it has to send in
batches, one actor call at a time per connection (what queued while a call was
in flight goes out together in the next), so a coalesced batch-log frame costs
one call at most; pushes holding only batch logs and heartbeats are paced to
one per ``PACE_FLUSHES * Config.flush_interval_s`` (20 ms by default), while an
epoch end, train end, save report or failure goes out at once. It long-polls
for the coordinator's messages (`poll` waits on that connection's outbox for
up to `Config.heartbeat_interval_s`).

A direct channel comes first: the coordinator actor serves the same coordinator
over a websocket on its node's address (token required), and `connect` uses it
when the worker reaches it, so that batch streaming on Ray costs what it costs
over websockets; the actor calls above are the fallback (a network that lets Ray
through but not the actor's port).

Errors: Ray's (`RayActorError`, `ActorDiedError`, `GetTimeoutError`, ...) and
call timeouts become `ConnectionClosed` at this boundary; a worker whose actor
dies is reported by the launcher (`report_lost`), which the coordinator turns
into `WorkerLostError` naming its rank.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import socket
from typing import Any

import ray
from ray.exceptions import RayError

from distcb.protocol import close_codes
from distcb.protocol.config import Config
from distcb.protocol.errors import ConnectionClosed, ProtocolError
from distcb.protocol.messages import (
    BatchFrame,
    Heartbeat,
    Message,
    decode_from_coordinator,
    encode,
)
from distcb.transport.base import Connection

__all__ = ["SCHEME", "RayConnection", "connect", "parse_address"]

SCHEME = "ray"
# A push of batch logs or heartbeats only waits until PACE_FLUSHES flush intervals
# (Config.flush_interval_s) after the previous push: an actor call costs ~1 ms of
# the worker's time here, a websocket frame ~40 us.
PACE_FLUSHES = 4


def parse_address(address: str) -> tuple[str | None, str]:
    """``ray:<name>`` or ``ray:<namespace>/<name>`` -> (namespace or None, actor name)."""
    scheme, sep, rest = address.partition(":")
    if scheme != SCHEME or not sep or not rest:
        raise ValueError(
            f"a Ray coordinator address looks like 'ray:<actor name>' or "
            f"'ray:<namespace>/<actor name>', received {address!r}"
        )
    namespace, slash, name = rest.rpartition("/")
    return (namespace if slash else None), name


# --------------------------------------------------------------------------- worker side


class RayConnection:
    """A worker's end: pushes in ordered batches (one call in flight), long-polls for replies.

    Create it with `connect`.
    """

    def __init__(self, handle: Any, conn_id: str, config: Config, peer: str):
        self._handle = handle
        self._conn_id = conn_id
        self._config = config
        self._peer = peer
        self._pending: list[bytes] = []
        self._wake = asyncio.Event()
        self._urgent = False
        self._pace_s = PACE_FLUSHES * config.flush_interval_s
        self._idle = asyncio.Event()
        self._idle.set()
        self._received: collections.deque[Message] = collections.deque()
        self._closed: str | None = None
        self._peer_closed: str | None = None
        self.pushes = 0  # actor calls made to send (statistics)
        self.polls = 0  # actor calls made to receive
        self.messages_sent = 0
        self._sender = asyncio.get_running_loop().create_task(
            self._send_loop(), name="distcb-ray-sender"
        )

    @property
    def peer(self) -> str:
        return self._peer

    def statistics(self) -> dict[str, int]:
        """Actor calls made (pushes, polls) and messages sent so far."""
        return {"pushes": self.pushes, "polls": self.polls, "messages_sent": self.messages_sent}

    async def send(self, message: Message) -> None:
        if self._closed is not None:
            raise ConnectionClosed(f"send on a closed connection ({self._closed})")
        self._pending.append(encode(message))
        if not isinstance(message, BatchFrame | Heartbeat):
            self._urgent = True
        self._idle.clear()
        self._wake.set()

    async def receive(self) -> Message:
        while not self._received:
            if self._peer_closed is not None:
                raise ConnectionClosed(f"{self._peer} closed the connection ({self._peer_closed})")
            if self._closed is not None:
                raise ConnectionClosed(self._closed)
            reply = await self._call(
                "poll",
                self._handle.poll.remote(self._conn_id, self._config.heartbeat_interval_s),
                self._config.heartbeat_timeout_s,
            )
            self.polls += 1
            if not isinstance(reply, dict) or not isinstance(reply.get("messages"), list):
                raise ProtocolError(f"{self._peer} answered a poll with {type(reply).__name__}")
            for item in reply["messages"]:
                if not isinstance(item, bytes):
                    raise ProtocolError(f"{self._peer} sent a {type(item).__name__}, not bytes")
                self._received.append(decode_from_coordinator(item))
            if reply.get("closed"):
                self._peer_closed = str(reply["closed"])
        return self._received.popleft()

    async def close(self, reason: str = "", *, code: int = close_codes.NORMAL) -> None:
        if self._closed is not None:
            return
        self._closed = reason or "closed by the worker"
        # What was sent before close goes out first, in order.
        if not self._sender.done():
            self._urgent = True
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self._config.reply_timeout_s)
        self._sender.cancel()
        await asyncio.gather(self._sender, return_exceptions=True)
        if self._peer_closed is None:
            with contextlib.suppress(ConnectionClosed):
                await self._call(
                    "close",
                    self._handle.close.remote(self._conn_id, self._closed),
                    self._config.reply_timeout_s,
                )

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_push = -math.inf
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                # Batch logs and heartbeats wait for the pacing interval (more of them
                # then share the call); anything else goes out at once.
                delay = last_push + self._pace_s - loop.time()
                if not self._urgent and delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                    self._wake.clear()
                    continue
                batch, self._pending, self._urgent = self._pending, [], False
                last_push = loop.time()
                try:
                    closed = await self._call(
                        "push",
                        self._handle.push.remote(self._conn_id, batch),
                        self._config.reply_timeout_s,
                    )
                except ConnectionClosed as exc:
                    self._fail(exc.reason)
                    return
                self.pushes += 1
                self.messages_sent += len(batch)
                if closed:
                    self._peer_closed = str(closed)
                    self._fail(f"{self._peer} closed the connection ({closed})")
                    return
            self._idle.set()

    def _fail(self, reason: str) -> None:
        if self._closed is None:
            self._closed = reason
        self._pending.clear()
        self._idle.set()

    async def _call(self, what: str, ref: Any, timeout_s: float) -> Any:
        """Await one actor call, mapping Ray's errors and the timeout to ConnectionClosed."""
        try:
            return await asyncio.wait_for(ref, timeout_s)
        except TimeoutError:
            raise ConnectionClosed(
                f"{self._peer} did not answer {what} within {timeout_s:g} s"
            ) from None
        except RayError as exc:
            raise ConnectionClosed(_describe_ray_error(f"{what} to {self._peer}", exc)) from None


def _describe_ray_error(what: str, exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{what} failed: {type(exc).__name__}: {first_line}"


DIRECT_TIMEOUT_S = 10.0  # the most a worker tries the direct channel before actor calls


async def connect(
    address: str, token: str, *, config: Config | None = None, direct: bool = True
) -> Connection:
    """Open a worker's connection to the coordinator actor named in `address` (``ray:<name>``).

    With `direct` (the default) the worker first asks the actor for its websocket
    and connects there; where that fails it falls back to actor calls
    (`RayConnection`). Retries while the actor is not registered yet, until
    `Config.connect_timeout_s`.

    Raises:
        ConnectionClosed: the actor could not be found or reached in time.
        ProtocolError: the coordinator rejected the token.
    """
    config = config or Config()
    namespace, name = parse_address(address)
    if not ray.is_initialized():
        raise ConnectionClosed(
            f"cannot reach {address}: this process is not connected to Ray (call ray.init())"
        )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.connect_timeout_s
    delay_s = 0.02
    while True:
        try:
            handle = await asyncio.to_thread(ray.get_actor, name, namespace=namespace)
            break
        except ValueError as exc:  # not registered (yet)
            if loop.time() + delay_s > deadline:
                raise ConnectionClosed(
                    f"no coordinator actor {name!r} within Config.connect_timeout_s="
                    f"{config.connect_timeout_s:g} s: {exc}"
                ) from None
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.5)
    if direct:
        connection = await _connect_direct(handle, token, config, name)
        if connection is not None:
            return connection
    peer = f"{socket.gethostname()}:{os.getpid()}"
    remaining = max(0.001, deadline - loop.time())
    try:
        conn_id: Any = await asyncio.wait_for(handle.open.remote(token, peer), remaining)
    except TimeoutError:
        raise ConnectionClosed(
            f"coordinator actor {name!r} did not answer within Config.connect_timeout_s="
            f"{config.connect_timeout_s:g} s"
        ) from None
    except RayError as exc:  # before ProtocolError: Ray's task errors also subclass the cause
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ProtocolError):
            raise ProtocolError(str(cause.args[0] if cause.args else cause)) from None
        raise ConnectionClosed(_describe_ray_error(f"opening {address}", exc)) from None
    return RayConnection(handle, str(conn_id), config, peer=f"coordinator {name}")


async def _connect_direct(handle: Any, token: str, config: Config, name: str) -> Connection | None:
    """A websocket straight to the coordinator actor's server, or None (use actor calls).

    Raises:
        ProtocolError: the coordinator rejected the token.
    """
    ask = getattr(handle, "direct_address", None)  # None: a coordinator from before it
    if ask is None:
        return None
    try:
        where = await asyncio.wait_for(ask.remote(token, DIRECT_TIMEOUT_S), DIRECT_TIMEOUT_S * 2)
    except TimeoutError:
        return None
    except RayError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ProtocolError):
            raise ProtocolError(str(cause.args[0] if cause.args else cause)) from None
        return None
    if not isinstance(where, str) or not where:
        return None
    from distcb.transport.websocket_client import connect as connect_websocket

    quick = config.replace(connect_timeout_s=min(config.connect_timeout_s, DIRECT_TIMEOUT_S))
    try:
        return await connect_websocket(
            where, token, config=quick, peer=f"coordinator {name} (direct)"
        )
    except ConnectionClosed:
        return None
