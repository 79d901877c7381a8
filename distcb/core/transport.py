"""The transport interface the coordinator depends on: an ordered, bidirectional channel.

A transport (memory, websocket, Ray) turns its own connections into
`Connection` objects and hands each to `Coordinator.serve`. It maps its own
errors to `ConnectionClosed` at this boundary, and it authenticates and
size-checks before a message reaches the coordinator.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from distcb.core.errors import DistcbError
from distcb.core.messages import Message


class ConnectionClosed(DistcbError):
    """The peer went away or the channel broke; `reason` says how."""

    def __init__(self, reason: str = "connection closed"):
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.reason,))


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

    async def close(self, reason: str = "") -> None:
        """Close the channel; the peer's `receive` raises ConnectionClosed."""
        ...
