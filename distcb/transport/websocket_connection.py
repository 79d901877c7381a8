"""One websocket, either end, as a distcb `Connection`: the frame codec and error mapping.

Each message is one BINARY frame of MessagePack (`distcb.protocol.messages.encode`);
TEXT frames come from another protocol version and are rejected. A frame that
does not decode to a valid message of the other side, or is over
`Config.max_message_bytes`, closes this connection (with a close code and
reason the peer can read) and raises `ProtocolError`. aiohttp's errors become
`ConnectionClosed` here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from distcb.protocol import close_codes, wire_bounds
from distcb.protocol.config import Config
from distcb.protocol.errors import ConnectionClosed, ProtocolError
from distcb.protocol.messages import PROTOCOL_VERSION, Message, encode

__all__ = ["WebSocketConnection"]

_MAX_CLOSE_REASON_BYTES = 123  # a close frame's payload is at most 125 bytes, 2 for the code
# RuntimeError: aiohttp's "Cannot write to closing transport" on older versions.
_SEND_ERRORS = (aiohttp.ClientError, ConnectionError, RuntimeError)


# The last message encoded on this thread, and its bytes: a broadcast encodes once for
# all connections (a loop's sends run on its thread, one at a time).
_encoded = threading.local()


class WebSocketConnection:
    """One end of a websocket channel, as a distcb `Connection`.

    Args:
        ws: the aiohttp websocket (server `WebSocketResponse` or client response).
        peer: who is on the other end, for error messages.
        config: limits and timeouts.
        receive_timeout_s: silence after which `receive` gives the peer up; None waits.
        decode: the decoder of the other side's messages (`decode_from_worker` on the
            coordinator's end, `decode_from_coordinator` on a worker's).
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
        decode: Callable[[bytes], Message],
        drop: Callable[[], Awaitable[None]],
    ):
        self._ws = ws
        self._peer = peer
        self._config = config
        self._receive_timeout_s = receive_timeout_s
        self._decode = decode
        self._drop = drop
        self._send_lock = asyncio.Lock()
        self._unusable: str | None = None  # why send/receive now raise ConnectionClosed
        self._close_started = False
        self.received = 0  # messages received and decoded

    @property
    def peer(self) -> str:
        return self._peer

    @property
    def closed(self) -> bool:
        return self._unusable is not None

    async def send(self, message: Message) -> None:
        """Send one message as one binary frame.

        Raises:
            ConnectionClosed: the channel is closed or broke, or the send took longer
                than `Config.reply_timeout_s`.
            ProtocolError: the message cannot be encoded or exceeds `max_message_bytes`.
        """
        if self._unusable is not None:
            raise ConnectionClosed(f"send on a closed connection ({self._unusable})")
        last = getattr(_encoded, "last", None)
        if last is not None and last[0] is message:  # a broadcast: one message, every worker
            data = last[1]
        else:
            data = encode(message)
            _encoded.last = (message, data)
        if len(data) > self._config.max_message_bytes:
            raise ProtocolError(
                f"a {message.type!r} message of {len(data)} bytes exceeds "
                f"Config.max_message_bytes={self._config.max_message_bytes}; the peer would close "
                "the connection. Send less per message or raise the limit on both sides."
            )
        timeout_s = self._config.reply_timeout_s
        try:
            async with asyncio.timeout(timeout_s), self._send_lock:
                await self._ws.send_bytes(data)
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
            if msg.type is WSMsgType.BINARY:
                message = await self._parse(msg.data)
                self.received += 1
                return message
            if msg.type is WSMsgType.TEXT:
                await self._reject(
                    WSCloseCode.UNSUPPORTED_DATA,
                    f"a text frame; protocol version {PROTOCOL_VERSION} sends each message as "
                    "one MessagePack binary frame (is the peer another distcb version?)",
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

    async def close(self, reason: str = "", *, code: int = close_codes.NORMAL) -> None:
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

    async def _parse(self, data: bytes) -> Message:
        try:
            if wire_bounds.needs_walk(data, self._config.max_decoded_elements):
                # A large or container-heavy frame: its bounds are walked (up to a second of
                # CPU) and it is decoded on a thread, so the loop answers everyone meanwhile.
                return await asyncio.to_thread(self._decode, data)
            return self._decode(data)
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
