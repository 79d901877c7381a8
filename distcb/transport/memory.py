"""In-process transport: two queues per connection, every message encoded and decoded.

Messages go through the same MessagePack encoding and validating decoders as
on a network, so a test over this transport also checks that everything sent
is serialisable and valid. Tests may push raw frames (`push_raw`) to see a
malformed one rejected.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from distcb.protocol import close_codes
from distcb.protocol.errors import ConnectionClosed
from distcb.protocol.messages import (
    Message,
    decode_from_coordinator,
    decode_from_worker,
    encode,
)

_CLOSED_HERE = object()


class _Closed:
    """The peer closed its end, saying why."""

    def __init__(self, reason: str):
        self.reason = reason


Decoder = Callable[[bytes], Message]


class MemoryConnection:
    """One end of an in-process channel."""

    def __init__(
        self,
        peer: str,
        inbox: asyncio.Queue[Any],
        outbox: asyncio.Queue[Any],
        decode: Decoder,
    ):
        self._peer = peer
        self._inbox = inbox
        self._outbox = outbox
        self._decode = decode
        self._closed: str | None = None

    @property
    def peer(self) -> str:
        return self._peer

    async def send(self, message: Message) -> None:
        if self._closed is not None:
            raise ConnectionClosed(f"send on a closed connection ({self._closed})")
        self._outbox.put_nowait(encode(message))

    def push_raw(self, frame: bytes) -> None:
        """Send bytes as they are (tests: a malformed frame)."""
        self._outbox.put_nowait(frame)

    async def receive(self) -> Message:
        if self._closed is not None:
            raise ConnectionClosed(self._closed)
        item = await self._inbox.get()
        if isinstance(item, _Closed):
            self._closed = f"{self._peer} closed the connection ({item.reason})"
            raise ConnectionClosed(self._closed)
        if item is _CLOSED_HERE:
            raise ConnectionClosed(self._closed or "closed")
        return self._decode(item)

    async def close(self, reason: str = "", *, code: int = close_codes.NORMAL) -> None:
        if self._closed is None:
            self._closed = reason or "closed"
            self._outbox.put_nowait(_Closed(self._closed))
            self._inbox.put_nowait(_CLOSED_HERE)  # wakes our own pending receive


def connection_pair(worker_name: str = "worker") -> tuple[MemoryConnection, MemoryConnection]:
    """(coordinator end, worker end) of a new in-process channel."""
    to_coordinator: asyncio.Queue[Any] = asyncio.Queue()
    to_worker: asyncio.Queue[Any] = asyncio.Queue()
    coordinator_end = MemoryConnection(
        worker_name, to_coordinator, to_worker, decode=decode_from_worker
    )
    worker_end = MemoryConnection(
        "coordinator", to_worker, to_coordinator, decode=decode_from_coordinator
    )
    return coordinator_end, worker_end
