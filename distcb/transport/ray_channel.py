"""The coordinator's end of the Ray transport's channels: plain asyncio, no ray import.

The coordinator actor (`distcb.launch.ray_actor`) answers its workers' actor
calls with a `ChannelHub`: `open` checks the token and starts serving a new
`ServerConnection`, `push` delivers a worker's messages (MessagePack bytes,
size-checked and decoded here), and the long `poll` takes what the coordinator
queued for that worker.
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

    def deliver(self, items: Sequence[Any]) -> None:
        for item in items:
            self._inbox.put_nowait(item)

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

    def push(self, conn_id: str, items: Any) -> str | None:
        """Deliver a worker's messages in order; returns why the connection is closed, if it is."""
        connection = self._connections.get(conn_id)
        if connection is None:
            return "unknown connection (the coordinator does not know this session)"
        if connection.closed is not None:
            return connection.closed
        connection.deliver(items if isinstance(items, list) else [items])
        return None

    async def poll(self, conn_id: str, wait_s: float) -> dict[str, Any]:
        """Long poll: the coordinator's messages for this connection, after up to `wait_s`."""
        connection = self._connections.get(conn_id)
        if connection is None:
            return {"messages": [], "closed": "unknown connection"}
        wait_s = max(0.0, min(float(wait_s), self._config.heartbeat_interval_s))
        return await connection.take(wait_s)

    def close(self, conn_id: str, reason: str) -> None:
        connection = self._connections.get(conn_id)
        if connection is not None:
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
