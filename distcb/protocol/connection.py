"""The channel the coordinator depends on: an ordered, bidirectional connection to a worker.

Declared in the protocol layer (not in `distcb.transport`) so that the coordinator
imports nothing from the layer that depends on it; `distcb.transport.base` re-exports it.

A transport (memory, websocket, Ray) turns its own connections into
`Connection` objects and hands each to `Coordinator.serve`. It maps its own
errors to `ConnectionClosed` at this boundary, and it authenticates and
size-checks before a message reaches the coordinator. Messages are encoded
with `distcb.protocol.messages.encode`; each end decodes with the decoder of
the other side's direction (`decode_from_worker` on the coordinator's end).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from distcb.protocol import close_codes
from distcb.protocol.errors import ConnectionClosed
from distcb.protocol.messages import Message


@runtime_checkable
class Connection(Protocol):
    """One ordered message channel between a worker and the coordinator."""

    @property
    def peer(self) -> str:
        """Who is on the other end, for error messages."""
        ...

    async def send(self, message: Message) -> None:
        """Send one message; raises ConnectionClosed."""
        ...

    async def receive(self) -> Message:
        """The next message, validated; raises ConnectionClosed or ProtocolError."""
        ...

    async def close(self, reason: str = "", *, code: int = close_codes.NORMAL) -> None:
        """Close the channel; the peer's `receive` raises ConnectionClosed.

        `code` says why (`distcb.protocol.close_codes`); a transport without close
        frames tells the peer the reason only."""
        ...


__all__ = ["Connection", "ConnectionClosed"]
