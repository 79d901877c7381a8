"""In-process transport between event loops: a coordinator and workers that are threads of
one process (the ``thread`` backend).

`distcb.transport.memory` joins two ends on ONE event loop (`distcb.testing`). Here
each end lives on its own loop: the coordinator's, and the IO thread's loop of each
worker's session (`distcb.worker.threaded`). A send therefore never touches the
peer's queue directly; it hands the frame to the peer's loop with
``call_soon_threadsafe``, which keeps the order of one sender's frames and wakes the
peer's pending `receive`. Messages are encoded and decoded exactly as on a network
(MessagePack, validating decoders), so a job over this transport sends what a job
over websockets sends, and the two ends share no mutable object.

Addresses look like ``inproc:<name>``; `InProcessListener` registers its name for
as long as it is open and `connect` (the connector of that scheme, see
`distcb.transport.connector_for`) finds it by that name, checking the job's token.
Nothing leaves the process: no socket, no port, no aiohttp. The peers are threads
of the same process, so frames need no size limit (a process can read its own
memory anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import secrets
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from distcb.protocol import close_codes
from distcb.protocol.config import Config
from distcb.protocol.errors import ConnectionClosed, ProtocolError
from distcb.protocol.messages import (
    Message,
    decode_from_coordinator,
    decode_from_worker,
    encode,
)
from distcb.transport.base import Connection

__all__ = ["SCHEME", "InProcessConnection", "InProcessListener", "connect"]

SCHEME = "inproc"

_LISTENERS: weakref.WeakValueDictionary[str, InProcessListener] = weakref.WeakValueDictionary()
_LISTENERS_LOCK = threading.Lock()
_NAMES = itertools.count(1)


class _Closed:
    """The peer closed its end, saying why."""

    def __init__(self, reason: str):
        self.reason = reason


_WAKE = object()  # our own close: wakes a pending receive


class InProcessConnection:
    """One end of a channel whose other end may run on another event loop (thread)."""

    def __init__(
        self,
        peer: str,
        loop: asyncio.AbstractEventLoop,
        decode: Callable[[bytes], Message],
    ):
        self._peer_name = peer
        self._loop = loop  # the loop that receives on this end
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._decode = decode
        self._other: InProcessConnection | None = None
        self._closed: str | None = None

    @property
    def peer(self) -> str:
        return self._peer_name

    def _deliver(self, item: Any) -> None:
        """Put `item` into this end's inbox, from any thread."""
        owner = self._other.peer if self._other is not None else "the peer"
        if self._loop.is_closed():
            raise ConnectionClosed(
                f"the {owner}'s event loop is closed (its thread ended without closing the "
                "connection)"
            )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._inbox.put_nowait(item)
        else:
            try:
                self._loop.call_soon_threadsafe(self._inbox.put_nowait, item)
            except RuntimeError as exc:  # closed between the check and the call
                raise ConnectionClosed(f"the {owner}'s event loop is closed ({exc})") from None

    async def send(self, message: Message) -> None:
        if self._closed is not None:
            raise ConnectionClosed(f"send on a closed connection ({self._closed})")
        assert self._other is not None
        self._other._deliver(encode(message))

    async def receive(self) -> Message:
        if self._closed is not None:
            raise ConnectionClosed(self._closed)
        item = await self._inbox.get()
        if isinstance(item, _Closed):
            self._closed = f"{self._peer_name} closed the connection ({item.reason})"
            raise ConnectionClosed(self._closed)
        if item is _WAKE:
            raise ConnectionClosed(self._closed or "closed")
        return self._decode(item)

    async def close(self, reason: str = "", *, code: int = close_codes.NORMAL) -> None:
        # `code` matters on the network (a close frame); in a process the reason says it all.
        if self._closed is not None:
            return
        self._closed = reason or "closed"
        assert self._other is not None
        with contextlib.suppress(ConnectionClosed):
            self._other._deliver(_Closed(self._closed))
        self._inbox.put_nowait(_WAKE)


class InProcessListener:
    """Accepts in-process worker connections and hands each to `serve` on this loop.

        async with InProcessListener(coordinator.serve) as listener:
            ...                     # workers (threads) connect to listener.address
            history = await coordinator.run()

    Args:
        serve: called with the coordinator's end of each new connection (on the loop
            that entered the listener); `Coordinator.serve`.
        token: the job's token; a random one when None.
    """

    def __init__(self, serve: Callable[[Connection], Awaitable[None]], *, token: str | None = None):
        self._serve = serve
        self.token = token or secrets.token_urlsafe(32)
        self._name = f"{next(_NAMES)}-{secrets.token_hex(4)}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # touched on the listener's loop only
        self._connections: set[InProcessConnection] = set()
        self._lock = threading.Lock()
        self._open = False

    @property
    def address(self) -> str:
        return f"{SCHEME}:{self._name}"

    async def __aenter__(self) -> InProcessListener:
        self._loop = asyncio.get_running_loop()
        self._open = True
        with _LISTENERS_LOCK:
            _LISTENERS[self._name] = self
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop accepting, close every connection and await the serving tasks."""
        with _LISTENERS_LOCK:
            _LISTENERS.pop(self._name, None)
        with self._lock:
            self._open = False
            connections = list(self._connections)
        tasks = list(self._tasks)
        for connection in connections:
            await connection.close("the coordinator is shutting down")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _accept(self, token: str, worker_loop: asyncio.AbstractEventLoop) -> InProcessConnection:
        """Called on the worker's loop: make a channel, serve its coordinator end here."""
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            raise ProtocolError(
                f"token rejected by the in-process coordinator at {self.address}; pass the "
                "token the job was started with"
            )
        loop = self._loop
        with self._lock:
            if not self._open or loop is None or loop.is_closed():
                raise ConnectionClosed(f"the coordinator at {self.address} is not accepting")
            ours = InProcessConnection("in-process worker", loop, decode_from_worker)
            theirs = InProcessConnection("coordinator", worker_loop, decode_from_coordinator)
            ours._other, theirs._other = theirs, ours
            self._connections.add(ours)
        try:
            loop.call_soon_threadsafe(self._start_serving, ours)
        except RuntimeError:  # the coordinator's loop closed meanwhile
            raise ConnectionClosed(f"the coordinator at {self.address} is not accepting") from None
        return theirs

    def _start_serving(self, connection: InProcessConnection) -> None:
        """On the listener's loop: serve the coordinator's end of a new channel."""
        if not self._open:
            self._loop_task(connection.close("the coordinator is shutting down"))
            return
        self._loop_task(self._serve_one(connection))

    def _loop_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="distcb-inproc-serve")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_one(self, connection: InProcessConnection) -> None:
        try:
            await self._serve(connection)
        finally:
            with self._lock:
                self._connections.discard(connection)
            await connection.close("the coordinator is done with this connection")


async def connect(address: str, token: str, *, config: Config | None = None) -> InProcessConnection:
    """A worker's connection to the in-process coordinator at `address` (``inproc:<name>``).

    Raises:
        ConnectionClosed: no listener of that name is open in this process.
        ProtocolError: the token is not the listener's.
    """
    scheme, _, name = address.partition(":")
    if scheme != SCHEME or not name:
        raise ValueError(f"an in-process address looks like 'inproc:<name>', received {address!r}")
    with _LISTENERS_LOCK:
        listener = _LISTENERS.get(name)
    if listener is None:
        raise ConnectionClosed(
            f"no in-process coordinator at {address} (it is not open, or it lives in another "
            "process: in-process addresses work only between threads of one process)"
        )
    return listener._accept(token, asyncio.get_running_loop())
