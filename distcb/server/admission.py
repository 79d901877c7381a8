"""What a peer without the token can hold of the coordinator's server, and what it can log.

`Admission` wraps the HTTP server's protocol factory (aiohttp's `web.Server`):

- at most `Config.max_connections` connections without the token at once
  (lowered to what the process's open-file limit leaves room for); one more is
  answered ``503`` and closed. A connection whose request carried the token (a
  worker, a signed-in status page) leaves that pool: joined workers never count
  against it (token holders have a pool of the same size of their own);
- at most `Config.max_anonymous_per_address` of those from one address, so that
  one peer reopening idle connections cannot fill the pool (a worker from another
  address still gets in);
- each connection must deliver a complete HTTP request within
  `Config.handshake_timeout_s` of its accept, its TLS handshake included; else
  ``408`` and closed (slowloris), or, mid-handshake, closed;
- with TLS, the server reads a connection's first byte itself (`distcb.server.tls_gate`): a
  TLS handshake goes on to the TLS layer, anything else (plain HTTP on the TLS
  port) is answered ``400`` saying that the coordinator speaks TLS. A
  connection's slot is freed when its TCP connection ends, whether or not its
  handshake finished;
- the event loop's "socket.accept() out of system resource" errors (the
  open-file limit reached anyway) are counted, not logged once per attempt.

`RejectionLog` counts every rejected connection by kind and logs a warning at
most once per `Config.rejection_log_interval_s` for each kind, saying how many
it left out: the rate of log lines is ours to decide, not the attacker's.
"""

from __future__ import annotations

import asyncio
import errno
import os
import ssl
import weakref
from collections.abc import Callable
from typing import Any

from distcb.protocol.config import Config
from distcb.server.raw_answers import answer_and_close, http_response, peer_host, peer_name
from distcb.server.rejections import KINDS, RejectionLog
from distcb.server.tls_gate import GuardedConnection, TlsGate

__all__ = ["KINDS", "Admission", "RejectionLog", "connection_room"]

_FD_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def connection_room(requested: int) -> tuple[int, str | None]:
    """`requested`, lowered to what the open-file limit leaves room for; and why, if lowered.

    Room = the soft ``RLIMIT_NOFILE`` minus the descriptors open now, minus a reserve
    (an eighth of the limit, at least 16) for files, pipes and refusals in flight.
    """
    try:
        import resource
    except ImportError:  # not on POSIX
        return requested, None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested, None
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 16
    room = max(1, soft - open_now - _reserve(soft))
    if room >= requested:
        return requested, None
    return room, (
        f"Config.max_connections={requested} lowered to {room}: the process may open "
        f"{soft} files (RLIMIT_NOFILE; raise it with `ulimit -n`) and {open_now} are open"
    )


def _reserve(soft_limit: int) -> int:
    return max(16, soft_limit // 8)


class _Slot:
    """One counted connection; released once, by connection_lost or garbage collection.

    Anonymous until a request on it carries the token (`Admission.authenticate`): only
    then does it leave the pool that `Config.max_connections` caps, and its address's
    count (`Config.max_anonymous_per_address`).
    """

    __slots__ = ("address", "admission", "authenticated", "open")

    def __init__(self, admission: Admission):
        self.admission = admission
        self.open = True
        self.authenticated = False
        self.address: str | None = None  # counted against its address while anonymous

    def count_address(self, transport: asyncio.BaseTransport) -> bool:
        """Count this connection against its peer's address; False when that address holds
        `Config.max_anonymous_per_address` anonymous connections already."""
        admission = self.admission
        address = peer_host(transport)
        held = admission.anonymous_by_address.get(address, 0)
        if held >= admission.config.max_anonymous_per_address:
            return False
        admission.anonymous_by_address[address] = held + 1
        self.address = address
        return True

    def authenticate(self) -> None:
        admission = self.admission
        if not self.open or self.authenticated:
            return
        if admission.authenticated_connections >= admission.max_connections:
            return  # token holders get a pool as large as everyone else's, no larger
        self.authenticated = True
        admission.authenticated_connections += 1
        self._uncount_address()

    def release(self) -> None:
        if self.open:
            self.open = False
            self.admission.open_connections -= 1
            if self.authenticated:
                self.admission.authenticated_connections -= 1
            self._uncount_address()

    def _uncount_address(self) -> None:
        address, self.address = self.address, None
        if address is None:
            return
        by_address = self.admission.anonymous_by_address
        by_address[address] -= 1
        if not by_address[address]:
            del by_address[address]


class _Guarded(GuardedConnection):
    """aiohttp's protocol for one connection, behind the handshake deadline."""

    def __init__(self, admission: Admission, inner: Any, slot: _Slot):
        self._admission = admission
        self._inner = inner
        self._slot = slot
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._expired = False
        self.deadline: float | None = None  # loop time; None: handshake_timeout_s from now

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        admission = self._admission
        admission.slots[transport] = self._slot
        admission.pending[transport] = self
        loop = asyncio.get_running_loop()
        deadline = self.deadline
        if deadline is None:
            deadline = loop.time() + admission.config.handshake_timeout_s
        self._timer = loop.call_at(deadline, self._expire)
        self._inner.connection_made(transport)
        if self.deadline is None and not self._slot.count_address(transport):  # plain TCP
            self.request_arrived()
            self._expired = True  # aiohttp hears nothing more of this connection
            self._linger = answer_and_close(transport, _over_address_limit(admission, transport))

    def data_received(self, data: bytes) -> None:
        if not self._expired:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._expired and self._transport is not None:
            self._transport.close()
            return None
        result: bool | None = self._inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self.request_arrived()
        if self._linger is not None:
            self._linger.cancel()
        self._slot.release()
        if self._transport is not None:
            self._admission.slots.pop(self._transport, None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def release(self) -> None:
        """The TCP connection ended (the TLS gate says so even mid-handshake)."""
        self.request_arrived()
        self._slot.release()
        if self._transport is not None:
            self._admission.slots.pop(self._transport, None)

    def count_address(self, transport: asyncio.BaseTransport) -> bool:
        """Count the TCP connection against its address (TLS: before the handshake)."""
        return self._slot.count_address(transport)

    def request_arrived(self) -> None:
        """The HTTP request is complete: the handshake deadline no longer applies."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._admission.pending.pop(self._transport, None)

    def _expire(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._admission.pending.pop(transport, None)
        timeout_s = self._admission.config.handshake_timeout_s
        self._admission.rejections.reject(
            "handshake_timeout",
            f"{peer_name(transport)} sent no complete HTTP request within "
            f"Config.handshake_timeout_s={timeout_s:g} s",
        )
        body = (
            f"no complete HTTP request within Config.handshake_timeout_s={timeout_s:g} s\n"
        ).encode()
        self._expired = True  # aiohttp hears nothing more of this connection
        self._linger = answer_and_close(transport, http_response(408, "Request Timeout", body))


class _Refusal(asyncio.Protocol):
    """A connection over the cap: answered 503 and closed, once its request arrived (so
    that the peer reads the answer rather than a reset) or after a short linger."""

    def __init__(self, admission: Admission):
        self._admission = admission
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        admission = self._admission
        limit = admission.max_connections
        admission.rejections.reject(
            "over_capacity",
            f"{peer_name(transport)} connected while {limit} connections were open "
            "(Config.max_connections)",
        )
        body = (
            f"the coordinator holds its limit of {limit} connections (Config.max_connections); "
            "retry later\n"
        ).encode()
        response = http_response(503, "Service Unavailable", body, retry_after=True)
        if admission.refusing >= admission.max_refusing:
            transport.write(response)
            transport.abort()  # a flood: no linger, free the descriptor now
            return
        self._timer = answer_and_close(transport, response)
        if self._timer is not None:
            admission.refusing += 1

    def data_received(self, data: bytes) -> None:
        pass  # the request: read and dropped, so that closing resets nothing

    def eof_received(self) -> bool | None:
        if self._transport is not None:
            self._transport.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._admission.refusing -= 1


class Admission:
    """The protocol factory of a guarded HTTP server, and what it counts.

    Args:
        server_factory: aiohttp's protocol factory (``AppRunner.server``).
        config: the bounds (`max_connections`, `handshake_timeout_s`,
            `rejection_log_interval_s`).
        max_connections: the cap actually applied (see `connection_room`).
        ssl_context: the server's TLS context: the server itself then listens on plain TCP
            and each connection's TLS is set up here (`distcb.server.tls_gate`).
    """

    def __init__(
        self,
        server_factory: Callable[[], Any],
        config: Config,
        max_connections: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self._factory = server_factory
        self._ssl = ssl_context
        self.config = config
        self.max_connections = max_connections
        self.max_refusing = max(4, _reserve(max_connections) // 2)
        self.rejections = RejectionLog(config.rejection_log_interval_s)
        self.open_connections = 0
        self.authenticated_connections = 0
        self.anonymous_by_address: dict[str, int] = {}
        self.slots: dict[asyncio.BaseTransport, _Slot] = {}  # by the HTTP layer's transport
        self.peak_connections = 0
        self.refusing = 0
        self.pending: dict[asyncio.Transport, _Guarded] = {}
        self._restore_handler: Callable[[], None] | None = None

    def __call__(self) -> asyncio.BaseProtocol:
        if self.open_connections - self.authenticated_connections >= self.max_connections:
            return _Refusal(self)
        self.open_connections += 1
        self.peak_connections = max(self.peak_connections, self.open_connections)
        slot = _Slot(self)
        guarded = _Guarded(self, self._factory(), slot)
        weakref.finalize(guarded, slot.release)  # a last resort; connection_lost frees it
        if self._ssl is not None:
            return TlsGate(
                self.config,
                self.rejections,
                guarded,
                self._ssl,
                lambda transport: _over_address_limit(self, transport),
            )
        return guarded

    def authenticate(self, transport: Any) -> None:
        """A request on `transport` carried the token (a worker, a signed-in page): its
        connection leaves the anonymous pool."""
        slot = self.slots.get(transport)
        if slot is not None:
            slot.authenticate()

    def request_arrived(self, transport: Any) -> None:
        """Called for every request that reached a handler (a middleware does it)."""
        guarded = self.pending.get(transport)
        if guarded is not None:
            guarded.request_arrived()

    def statistics(self) -> dict[str, Any]:
        return {
            "connections_open": self.open_connections,
            "connections_authenticated": self.authenticated_connections,
            "connections_peak": self.peak_connections,
            "max_connections": self.max_connections,
            "rejected": dict(self.rejections.counts),
        }

    # ------------------------------------------------------------------ accept errors

    def watch_accept_errors(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count the loop's accept errors on the open-file limit instead of logging each.

        asyncio logs "socket.accept() out of system resource" with a traceback on every
        failed accept (Python 3.11: up to the backlog's length per wake-up, 64,000 lines
        in 20 s were seen); every other error goes to the handler there was before.
        """
        previous = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            error = context.get("exception")
            if (
                isinstance(error, OSError)
                and error.errno in _FD_ERRORS
                and "accept" in str(context.get("message", ""))
            ):
                self.rejections.reject(
                    "accept_error",
                    f"could not accept a connection: {error.strerror} (the process's open-file "
                    "limit, RLIMIT_NOFILE: raise it with `ulimit -n`, or lower "
                    "Config.max_connections)",
                )
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)

        def restore() -> None:
            if loop.get_exception_handler() is handler:
                loop.set_exception_handler(previous)

        self._restore_handler = restore

    def close(self) -> None:
        if self._restore_handler is not None:
            self._restore_handler()
            self._restore_handler = None
        for guarded in list(self.pending.values()):
            guarded.request_arrived()


def _over_address_limit(admission: Admission, transport: asyncio.BaseTransport) -> bytes:
    """Count and log a connection over its address's limit; the 503 answer to it."""
    limit = admission.config.max_anonymous_per_address
    admission.rejections.reject(
        "over_address_limit",
        f"{peer_name(transport)} connected while its address held {limit} connections without "
        "the token (Config.max_anonymous_per_address)",
    )
    body = (
        f"this address holds {limit} connections that sent no token "
        "(Config.max_anonymous_per_address); retry later\n"
    ).encode()
    return http_response(503, "Service Unavailable", body, retry_after=True)
