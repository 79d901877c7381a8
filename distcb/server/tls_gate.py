"""A TLS port's connections before TLS: the first byte decides whether a connection is a
TLS handshake (handed to asyncio's TLS layer) or plain HTTP (answered ``400``)."""

from __future__ import annotations

import abc
import asyncio
import json
import ssl
from asyncio import sslproto
from collections.abc import Callable
from typing import Any

from distcb.protocol.config import Config
from distcb.server.raw_answers import answer_and_close, http_response, peer_name
from distcb.server.rejections import RejectionLog
from distcb.transport.tls import PLAINTEXT_TO_TLS

__all__ = ["GuardedConnection", "TlsGate"]


class GuardedConnection(asyncio.Protocol, abc.ABC):
    """The HTTP layer's protocol behind the gate (`distcb.server.admission`'s guard)."""

    deadline: float | None = None  # loop time by which the HTTP request must be complete

    @abc.abstractmethod
    def count_address(self, transport: asyncio.BaseTransport) -> bool:
        """Count the connection against its peer's address; False when that one is full."""

    @abc.abstractmethod
    def release(self) -> None:
        """The TCP connection ended, whether or not its TLS handshake finished."""


class TlsGate(asyncio.BufferedProtocol):
    """A TLS connection's own protocol: reads the first byte, then hands the connection to
    the TLS layer (a handshake record) or answers plain HTTP with ``400`` (anything else).

    It stays the TCP transport's protocol and forwards to asyncio's TLS protocol, so that
    it hears the connection end even when the handshake never finished (asyncio tells the
    application nothing then): the slot is freed, and a handshake that outlives the
    deadline is cut off and counted.
    """

    def __init__(
        self,
        config: Config,
        rejections: RejectionLog,
        guarded: GuardedConnection,
        context: ssl.SSLContext,
        refuse_over_address_limit: Callable[[asyncio.BaseTransport], object],
    ):
        self._config = config
        self._rejections = rejections
        self._guarded = guarded
        self._refuse_over_address_limit = refuse_over_address_limit
        self._context = context
        self._transport: asyncio.Transport | None = None
        self._first = bytearray(1)
        self._tls: sslproto.SSLProtocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._deadline = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        loop = asyncio.get_running_loop()
        timeout_s = self._config.handshake_timeout_s
        self._deadline = loop.time() + timeout_s
        self._guarded.deadline = self._deadline  # the HTTP request: the same deadline
        self._timer = loop.call_at(self._deadline, self._expire)
        if not self._guarded.count_address(transport):
            self._refuse_over_address_limit(transport)
            transport.abort()  # no handshake yet: nothing can be said to it

    def get_buffer(self, sizehint: int) -> Any:
        if self._tls is not None:
            return self._tls.get_buffer(sizehint)
        return memoryview(self._first)

    def buffer_updated(self, nbytes: int) -> None:
        if self._tls is not None:
            self._tls.buffer_updated(nbytes)
        elif self._linger is not None:
            pass  # the rest of a plain request, answered already: read and dropped
        elif self._transport is not None and not self._transport.is_closing() and nbytes:
            if self._first[0] == 0x16:  # a TLS handshake record
                self._start_tls(self._transport)
            else:
                self._answer_plaintext(self._transport)

    def _start_tls(self, transport: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        waiter.add_done_callback(self._handshake_done)
        tls = sslproto.SSLProtocol(
            loop,
            self._guarded,
            self._context,
            waiter,
            server_side=True,
            # Ours cuts it off at the deadline (and counts it); asyncio's is a backstop.
            ssl_handshake_timeout=max(0.001, self._deadline - loop.time()) + 1.0,  # type: ignore[arg-type]
        )
        self._tls = tls
        tls.connection_made(transport)
        buffer = tls.get_buffer(1)
        buffer[0] = self._first[0]
        tls.buffer_updated(1)

    def _handshake_done(self, waiter: asyncio.Future[None]) -> None:
        if waiter.cancelled():
            return
        if waiter.exception() is None and self._timer is not None:
            self._timer.cancel()  # the HTTP request's deadline is _Guarded's now
            self._timer = None

    def _answer_plaintext(self, transport: asyncio.Transport) -> None:
        self._cancel_timer()
        self._rejections.reject(
            "plaintext", f"{peer_name(transport)} spoke plain HTTP to the TLS port"
        )
        body = json.dumps({"error": f"{PLAINTEXT_TO_TLS}; dial https:// or wss://"}) + "\n"
        response = http_response(400, "Bad Request", body.encode(), content_type="application/json")
        self._linger = answer_and_close(transport, response)

    def _expire(self) -> None:
        """No first byte, or no finished handshake, by the deadline: cut it off."""
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        timeout_s = self._config.handshake_timeout_s
        self._rejections.reject(
            "handshake_timeout",
            f"{peer_name(transport)} finished no TLS handshake within "
            f"Config.handshake_timeout_s={timeout_s:g} s",
        )
        transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def eof_received(self) -> bool | None:
        if self._tls is not None:
            self._tls.eof_received()
            return None
        if self._transport is not None:
            self._transport.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._linger is not None:
            self._linger.cancel()
        self._guarded.release()
        if self._tls is not None:
            self._tls.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._tls is not None:
            self._tls.pause_writing()

    def resume_writing(self) -> None:
        if self._tls is not None:
            self._tls.resume_writing()
