"""Answers written straight onto a connection's transport, below aiohttp: for the
connections the server turns away before (or instead of) handing them to the HTTP layer."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["answer_and_close", "http_response", "peer_host", "peer_name"]

_LINGER_S = 1.0  # after an answer that closes a connection: how long it may still send


def answer_and_close(transport: asyncio.Transport, response: bytes) -> asyncio.TimerHandle | None:
    """Write `response`, end our side, and close once the peer is done or after a linger
    (closing on unread data would reset the connection and lose the answer)."""
    transport.write(response)
    if not transport.can_write_eof():  # TLS
        transport.close()
        return None
    transport.write_eof()
    return asyncio.get_running_loop().call_later(_LINGER_S, transport.close)


def peer_host(transport: asyncio.BaseTransport) -> str:
    peername = transport.get_extra_info("peername")
    with contextlib.suppress(TypeError, IndexError):
        return str(peername[0])
    return "?"


def peer_name(transport: asyncio.BaseTransport) -> str:
    peername = transport.get_extra_info("peername")
    with contextlib.suppress(TypeError, IndexError):
        return f"{peername[0]}:{peername[1]}"
    return "a peer"


def http_response(
    status: int,
    phrase: str,
    body: bytes,
    *,
    retry_after: bool = False,
    content_type: str = "text/plain; charset=utf-8",
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        + ("Retry-After: 1\r\n" if retry_after else "")
        + "\r\n"
    )
    return head.encode() + body
