"""The coordinator's end of the Ray transport's channels: plain asyncio, no ray import.

The coordinator actor (`distcb.launch.ray_actor`) answers its workers' actor
calls with a `ChannelHub`: `open` checks the token and starts serving a new
`ServerConnection`, `push` delivers a worker's messages (MessagePack bytes,
size-checked and decoded here), and the long `poll` delivers what it carries
and takes what the coordinator queued for that worker. Pushes and polls number
the messages they carry (``seq``, the number of the first): a connection takes
them in that order whichever call arrives first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from distcb.protocol.config import Config
from distcb.protocol.errors import ConnectionClosed, ProtocolError
from distcb.protocol.messages import Message, decode_from_worker, encode
from distcb.transport.base import Connection

_CLOSED = object()
MAX_EARLY_BATCHES = 64  # batches that arrived ahead of a missing one, per connection


def check_frame(item: Any, limit: int, peer: str) -> Message:
    """Validate one pushed item: MessagePack bytes of a worker message within the size limit."""
    if not isinstance(item, bytes):
        raise ProtocolError(f"{peer} sent a {type(item).__name__}, expected message bytes")
    if len(item) > limit:
        raise ProtocolError(
            f"{peer} sent a {len(item)}-byte message, over Config.max_message_bytes={limit}"
        )
    return decode_from_worker(item)


class ServerConnection:
    """The coordinator's end of one worker's channel, fed by `push`, drained by `poll`.

    Lives on the coordinator's event loop; `send` never blocks (the outbox is
    drained by the worker's long poll).
    """

    def __init__(self, conn_id: str, peer: str, config: Config):
        self.conn_id = conn_id
        self._peer = peer
        self._config = config
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._outbox: list[bytes] = []
        self._out_ready = asyncio.Event()
        self._closed: str | None = None
        self._peer_closed = False
        self._expected = 0  # the number of the next message to take in
        self._early: dict[int, list[Any]] = {}  # batches ahead of a missing one, by seq
        self._close_after: tuple[int, str] | None = None  # (messages, reason) of a close

    @property
    def peer(self) -> str:
        return self._peer

    @property
    def closed(self) -> str | None:
        return self._closed

    async def send(self, message: Message) -> None:
        if self._closed is not None:
            raise ConnectionClosed(f"send to {self._peer} on a closed connection ({self._closed})")
        self._outbox.append(encode(message))
        self._out_ready.set()

    async def receive(self) -> Message:
        item = await self._inbox.get()
        if isinstance(item, ProtocolError):
            raise item
        if item is _CLOSED:
            self._inbox.put_nowait(_CLOSED)  # every later receive fails too
            raise ConnectionClosed(self._closed or f"{self._peer} closed the connection")
        return check_frame(item, self._config.max_message_bytes, self._peer)

    async def close(self, reason: str = "") -> None:
        if self._closed is None:
            self._closed = reason or "closed by the coordinator"
            self._inbox.put_nowait(_CLOSED)
            self._out_ready.set()

    # The actor's side.

    def deliver(self, items: Sequence[Any], seq: Any = None) -> None:
        """Take in a batch of the worker's messages numbered from `seq`, in order."""
        items = list(items)
        if not items:
            return
        if seq is None:
            seq = self._expected
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < self._expected:
            self._break(f"sent messages numbered {seq!r}, expected {self._expected} or later")
            return
        if seq > self._expected:
            if len(self._early) >= MAX_EARLY_BATCHES or seq in self._early:
                self._break(f"sent messages numbered {seq} while {self._expected} is missing")
                return
            self._early[seq] = items
            return
        while True:
            for item in items:
                self._inbox.put_nowait(item)
            self._expected += len(items)
            next_items = self._early.pop(self._expected, None)
            if next_items is None:
                break
            items = next_items
        if self._close_after is not None and self._expected >= self._close_after[0]:
            self.close_from_peer(self._close_after[1])

    def close_after(self, sent: int, reason: str) -> None:
        """The worker closed after sending `sent` messages: close once all are taken in."""
        if self._expected >= sent:
            self.close_from_peer(reason)
        else:
            self._close_after = (sent, reason)

    def _break(self, problem: str) -> None:
        reason = f"{self._peer} {problem}"
        if self._closed is None:
            self._closed = reason
            self._inbox.put_nowait(ProtocolError(reason))
            self._inbox.put_nowait(_CLOSED)
            self._out_ready.set()

    def close_from_peer(self, reason: str) -> None:
        if self._closed is None:
            self._closed = f"{self._peer} closed the connection ({reason or 'no reason given'})"
            self._peer_closed = True
            self._inbox.put_nowait(_CLOSED)
            self._out_ready.set()

    async def take(self, wait_s: float) -> dict[str, Any]:
        """Everything queued for the worker, waiting up to `wait_s` for something."""
        if not self._outbox and self._closed is None:
            self._out_ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._out_ready.wait()
        messages, self._outbox = self._outbox, []
        return {"messages": messages, "closed": self._closed}


class ChannelHub:
    """The coordinator actor's connections: opened with the token, fed by pushes, drained
    by polls. Lives on the coordinator's event loop.

    Args:
        serve: serves one connection until it closes (`Coordinator.serve`).
        token: the secret every worker presents when it opens its channel.
        config: limits and timeouts.
    """

    def __init__(
        self,
        serve: Callable[[Connection], Coroutine[Any, Any, None]],
        token: str,
        config: Config,
    ):
        self._serve = serve
        self._token = token.encode()
        self._config = config
        self._connections: dict[str, ServerConnection] = {}
        self._serving: set[asyncio.Task[None]] = set()

    def check_token(self, token: str, peer: str) -> None:
        if not hmac.compare_digest(str(token).encode(), self._token):
            raise ProtocolError(f"{peer} presented a wrong job token")

    def open(self, peer: str) -> str:
        """A worker opens its channel (token already checked); returns its connection id."""
        conn_id = secrets.token_hex(16)
        connection = ServerConnection(conn_id, peer, self._config)
        self._connections[conn_id] = connection
        task = asyncio.get_running_loop().create_task(self._serve(connection), name=f"serve-{peer}")
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)
        return conn_id

    def push(self, conn_id: str, items: Any, seq: Any = None) -> str | None:
        """Deliver a worker's messages (numbered from `seq`) in order; returns why the
        connection is closed, if it is."""
        connection = self._connections.get(conn_id)
        if connection is None:
            return "unknown connection (the coordinator does not know this session)"
        if connection.closed is not None:
            return connection.closed
        connection.deliver(items if isinstance(items, list) else [items], seq)
        return None

    async def poll(
        self, conn_id: str, wait_s: float, items: Any = (), seq: Any = None
    ) -> dict[str, Any]:
        """Long poll: deliver what it carries (numbered from `seq`), then the coordinator's
        messages for this connection, after up to `wait_s`."""
        connection = self._connections.get(conn_id)
        if connection is None:
            return {"messages": [], "closed": "unknown connection"}
        if items and connection.closed is None:
            connection.deliver(items if isinstance(items, list) else [items], seq)
        wait_s = max(0.0, min(float(wait_s), self._config.heartbeat_interval_s))
        return await connection.take(wait_s)

    def close(self, conn_id: str, reason: str, sent: Any = None) -> None:
        """The worker closed its end after sending `sent` messages (None: close now)."""
        connection = self._connections.get(conn_id)
        if connection is None:
            return
        if isinstance(sent, int) and not isinstance(sent, bool):
            connection.close_after(sent, reason)
            loop = asyncio.get_running_loop()
            loop.call_later(self._config.reply_timeout_s, connection.close_from_peer, reason)
        else:
            connection.close_from_peer(reason)

    async def aclose(self) -> None:
        """Close every connection and wait (bounded) for their serving tasks."""
        for connection in list(self._connections.values()):
            await connection.close("job finished")
        if self._serving:
            _, pending = await asyncio.wait(
                set(self._serving), timeout=self._config.reply_timeout_s
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
