"""One websocket, either end, as a distcb `Connection`: the frame codec and error mapping.

Each message is one TEXT frame of strict JSON (`encode`); BINARY frames are
reserved for arrays and rejected for now. A frame that is not JSON, not a
valid message, or over `Config.max_message_bytes` closes this connection
(with a close code and reason the peer can read) and raises `ProtocolError`.
aiohttp's errors become `ConnectionClosed` here.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from distcb.core.config import Config
from distcb.core.errors import ProtocolError
from distcb.core.messages import Message, decode, encode
from distcb.core.transport import ConnectionClosed

__all__ = ["WebSocketConnection"]

_MAX_CLOSE_REASON_BYTES = 123  # a close frame's payload is at most 125 bytes, 2 for the code
# RuntimeError: aiohttp's "Cannot write to closing transport" on older versions.
_SEND_ERRORS = (aiohttp.ClientError, ConnectionError, RuntimeError)


# The last message encoded on this thread, and its text: a broadcast encodes once for
# all connections (a loop's sends run on its thread, one at a time).
_encoded = threading.local()


class WebSocketConnection:
    """One end of a websocket channel, as a distcb `Connection`.

    Args:
        ws: the aiohttp websocket (server `WebSocketResponse` or client response).
        peer: who is on the other end, for error messages.
        config: limits and timeouts.
        receive_timeout_s: silence after which `receive` gives the peer up; None waits.
        drop: closes the underlying TCP connection without a handshake (and frees
            what this end owns, such as the client session).
    """

    def __init__(
        self,
        ws: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
        peer: str,
        config: Config,
        *,
        receive_timeout_s: float | None,
        drop: Callable[[], Awaitable[None]],
    ):
        self._ws = ws
        self._peer = peer
        self._config = config
        self._receive_timeout_s = receive_timeout_s
        self._drop = drop
        self._send_lock = asyncio.Lock()
        self._unusable: str | None = None  # why send/receive now raise ConnectionClosed
        self._close_started = False

    @property
    def peer(self) -> str:
        return self._peer

    @property
    def closed(self) -> bool:
        return self._unusable is not None

    async def send(self, message: Message) -> None:
        """Send one message as one text frame.

        Raises:
            ConnectionClosed: the channel is closed or broke, or the send took longer
                than `Config.reply_timeout_s`.
            ProtocolError: the message is not strict JSON or exceeds `max_message_bytes`.
        """
        if self._unusable is not None:
            raise ConnectionClosed(f"send on a closed connection ({self._unusable})")
        last = getattr(_encoded, "last", None)
        if last is not None and last[0] is message:  # a broadcast: one message, every worker
            text = last[1]
        else:
            try:
                text = json.dumps(encode(message), allow_nan=False)  # ASCII: len() counts bytes
            except (TypeError, ValueError) as exc:
                raise ProtocolError(
                    f"a {message.type!r} message is not strict JSON: {exc}"
                ) from exc
            _encoded.last = (message, text)
        if len(text) > self._config.max_message_bytes:
            raise ProtocolError(
                f"a {message.type!r} message of {len(text)} bytes exceeds "
                f"Config.max_message_bytes={self._config.max_message_bytes}; the peer would close "
                "the connection. Send less per message or raise the limit on both sides."
            )
        timeout_s = self._config.reply_timeout_s
        try:
            async with asyncio.timeout(timeout_s), self._send_lock:
                await self._ws.send_str(text)
        except TimeoutError:
            await self.abort(f"a send took longer than Config.reply_timeout_s={timeout_s:g} s")
            raise ConnectionClosed(
                f"sending to {self._peer} took longer than Config.reply_timeout_s={timeout_s:g} s"
            ) from None
        except _SEND_ERRORS as exc:
            self._unusable = self._unusable or f"send failed: {exc}"
            raise ConnectionClosed(f"could not send to {self._peer}: {exc}") from exc

    async def receive(self) -> Message:
        """The next message, validated.

        Raises:
            ConnectionClosed: the peer closed or went silent, or this end was closed.
            ProtocolError: the peer sent a bad frame; this connection is then closed.
        """
        while True:
            if self._unusable is not None:
                raise ConnectionClosed(self._unusable)
            try:
                msg = await self._ws.receive(timeout=self._receive_timeout_s)
            except TimeoutError:
                reason = (
                    f"{self._peer} sent nothing for {self._receive_timeout_s:g} s "
                    "(Config.heartbeat_timeout_s)"
                )
                await self.close(reason)
                raise ConnectionClosed(reason) from None
            except (aiohttp.ClientError, ConnectionError) as exc:
                self._unusable = self._unusable or f"connection to {self._peer} broke: {exc}"
                await self.close(str(exc), code=WSCloseCode.INTERNAL_ERROR)
                raise ConnectionClosed(self._unusable) from exc
            if msg.type is WSMsgType.TEXT:
                return await self._parse(msg.data)
            if msg.type is WSMsgType.BINARY:
                await self._reject(
                    WSCloseCode.UNSUPPORTED_DATA,
                    "a binary frame; this protocol version sends each message as one JSON "
                    "text frame",
                )
            elif msg.type is WSMsgType.ERROR:
                await self._on_error(msg.data)
            elif msg.type is WSMsgType.CLOSE:
                detail = f": {msg.extra}" if msg.extra else ""
                self._unusable = self._unusable or (
                    f"{self._peer} closed the connection (code {msg.data}{detail})"
                )
                await self.close(self._unusable)  # frees what this end holds
            elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED):
                self._unusable = self._unusable or (
                    f"the connection to {self._peer} dropped without a closing handshake"
                )
                await self.close(self._unusable)
            # PING/PONG are answered by aiohttp (autoping); read on.

    async def close(self, reason: str = "", *, code: int = WSCloseCode.OK) -> None:
        """Close the channel with a closing handshake; the peer's `receive` raises
        ConnectionClosed with `reason` (cut to the 123 bytes a close frame holds)."""
        reason = reason or "closed"
        self._unusable = self._unusable or f"connection to {self._peer} closed here: {reason}"
        if self._close_started:
            return
        self._close_started = True
        try:
            # aiohttp waits for the peer's answer; a live peer gives it within a heartbeat.
            async with asyncio.timeout(self._config.heartbeat_interval_s * 2):
                await self._ws.close(code=code, message=_close_message(reason))
        except (TimeoutError, *_SEND_ERRORS):
            pass  # aiohttp closes the transport itself on both paths
        finally:
            await self._drop()

    async def abort(self, reason: str = "aborted") -> None:
        """Drop the connection at once, without the closing handshake (what a crash does)."""
        self._unusable = self._unusable or f"connection to {self._peer} aborted here: {reason}"
        self._close_started = True
        await self._drop()

    async def _parse(self, text: str) -> Message:
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            await self._reject(WSCloseCode.INVALID_TEXT, f"a text frame that is not JSON: {exc}")
        try:
            return decode(data)
        except ProtocolError as exc:
            await self._reject(WSCloseCode.POLICY_VIOLATION, f"an invalid message: {exc}")
        except Exception as exc:  # a validator gap must not escape this boundary
            await self._reject(
                WSCloseCode.POLICY_VIOLATION,
                f"an invalid message ({type(exc).__name__}: {exc})",
            )

    async def _reject(self, code: int, problem: str) -> NoReturn:
        """Close this connection over a bad frame and raise ProtocolError naming it."""
        await self.close(problem, code=code)
        raise ProtocolError(f"{self._peer} sent {problem}")

    async def _on_error(self, error: Any) -> NoReturn:
        if isinstance(error, aiohttp.WebSocketError):  # aiohttp already closed with its code
            await self.close(str(error), code=error.code)
            if error.code == WSCloseCode.MESSAGE_TOO_BIG:
                raise ProtocolError(
                    f"{self._peer} sent a message over Config.max_message_bytes="
                    f"{self._config.max_message_bytes} ({error})"
                )
            raise ProtocolError(f"{self._peer} broke the websocket protocol: {error}")
        self._unusable = self._unusable or f"connection to {self._peer} failed: {error!r}"
        await self.close(str(error), code=WSCloseCode.INTERNAL_ERROR)
        raise ConnectionClosed(self._unusable)


def _close_message(reason: str) -> bytes:
    data = reason.encode("utf-8")
    if len(data) <= _MAX_CLOSE_REASON_BYTES:
        return data
    return data[: _MAX_CLOSE_REASON_BYTES - 3].decode("utf-8", "ignore").encode() + b"..."


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (non-finite numbers travel as strings)")
