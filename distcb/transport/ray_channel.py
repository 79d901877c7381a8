"""The coordinator's end of the Ray transport's channels: plain asyncio, no ray import.

`distcb.transport.ray` feeds these from actor calls: a worker's `push` delivers
validated messages, its long `poll` takes what the coordinator queued for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

from distcb.core.config import Config
from distcb.core.errors import ProtocolError
from distcb.core.messages import Message, decode, encode
from distcb.core.transport import ConnectionClosed

_CLOSED = object()


def check_frame(item: Any, limit: int, peer: str) -> Message:
    """Validate one pushed item as a strict-JSON message within the size limit."""
    if not isinstance(item, dict):
        raise ProtocolError(f"{peer} sent a {type(item).__name__}, expected a message object")
    try:
        size = len(json.dumps(item, allow_nan=False, separators=(",", ":")))
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{peer} sent a message that is not strict JSON: {exc}") from None
    if size > limit:
        raise ProtocolError(
            f"{peer} sent a {size}-byte message, over Config.max_message_bytes={limit}"
        )
    return decode_item(item, peer)


def decode_item(item: Any, peer: str) -> Message:
    """`decode`, where anything but a ProtocolError (a decoder bug) becomes one too."""
    try:
        return decode(item)
    except ProtocolError:
        raise
    except Exception as exc:
        raise ProtocolError(
            f"{peer} sent a message that could not be decoded ({type(exc).__name__}: {exc})"
        ) from exc


class ServerConnection:
    """The coordinator's end of one worker's channel, fed by `push`, drained by `poll`.

    Lives on the coordinator's event loop; `send` never blocks (the outbox is
    drained by the worker's long poll).
    """

    def __init__(self, conn_id: str, peer: str, config: Config, on_message: Any = None):
        self.conn_id = conn_id
        self._peer = peer
        self._config = config
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._outbox: list[dict[str, Any]] = []
        self._out_ready = asyncio.Event()
        self._closed: str | None = None
        self._peer_closed = False
        self._on_message = on_message

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
        message = check_frame(item, self._config.max_message_bytes, self._peer)
        if self._on_message is not None:
            self._on_message(message)
        return message

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
                await asyncio.wait_for(self._out_ready.wait(), wait_s)
        messages, self._outbox = self._outbox, []
        return {"messages": messages, "closed": self._closed}
