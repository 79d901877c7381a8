"""In-process transport: two queues per connection, every message encoded and decoded.

Messages go through the same encode/decode (and JSON) as on a network, so a
test over this transport also checks that everything sent is serialisable.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from distcb.core.errors import ProtocolError
from distcb.core.messages import Message, decode, encode
from distcb.core.transport import ConnectionClosed

_CLOSED = object()
_CLOSED_HERE = object()


class MemoryConnection:
    """One end of an in-process channel."""

    def __init__(self, peer: str, inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any]):
        # Queues carry JSON text, so tests can also push raw (malformed) frames.
        self._peer = peer
        self._inbox = inbox
        self._outbox = outbox
        self._closed: str | None = None

    @property
    def peer(self) -> str:
        return self._peer

    async def send(self, message: Message) -> None:
        if self._closed is not None:
            raise ConnectionClosed(f"send on a closed connection ({self._closed})")
        self._outbox.put_nowait(json.dumps(encode(message), allow_nan=False))

    async def receive(self) -> Message:
        if self._closed is not None:
            raise ConnectionClosed(self._closed)
        item = await self._inbox.get()
        if item is _CLOSED:
            self._closed = "closed by peer"
            raise ConnectionClosed(f"{self._peer} closed the connection")
        if item is _CLOSED_HERE:
            raise ConnectionClosed(self._closed or "closed")
        try:
            data = json.loads(item)
        except ValueError as exc:
            raise ProtocolError(f"{self._peer} sent a frame that is not JSON: {exc}") from None
        return decode(data)

    async def close(self, reason: str = "") -> None:
        if self._closed is None:
            self._closed = reason or "closed"
            self._outbox.put_nowait(_CLOSED)
            self._inbox.put_nowait(_CLOSED_HERE)  # wakes our own pending receive


def connection_pair(worker_name: str = "worker") -> tuple[MemoryConnection, MemoryConnection]:
    """(coordinator end, worker end) of a new in-process channel."""
    to_coordinator: asyncio.Queue[Any] = asyncio.Queue()
    to_worker: asyncio.Queue[Any] = asyncio.Queue()
    coordinator_end = MemoryConnection(worker_name, to_coordinator, to_worker)
    worker_end = MemoryConnection("coordinator", to_worker, to_coordinator)
    return coordinator_end, worker_end
