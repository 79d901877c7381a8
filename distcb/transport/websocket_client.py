"""The workers' websocket client: `connect` to a coordinator's `WebSocketServer`."""

from __future__ import annotations

import asyncio

import aiohttp
from yarl import URL

from distcb.protocol.config import Config
from distcb.protocol.errors import ConnectionClosed, ProtocolError
from distcb.protocol.messages import decode_from_coordinator
from distcb.transport import tls
from distcb.transport.websocket_connection import WebSocketConnection

WS_PATH = "/ws"
"""The path of the worker channel on the coordinator's server."""

__all__ = ["WS_PATH", "connect"]


async def connect(
    address_or_url: str,
    token: str,
    *,
    config: Config | None = None,
    peer: str = "coordinator",
    ca_file: str | None = None,
) -> WebSocketConnection:
    """Connect a worker to its coordinator; retries refused connections (workers often
    start before the coordinator listens) until `Config.connect_timeout_s`.

    Args:
        address_or_url: ``host:port`` or a ``ws://`` / ``wss://`` URL (path ``/ws`` by default).
        token: the job's token (`WebSocketServer.token`).
        config: limits and timeouts; the defaults when None.
        peer: the name of the other end in error messages.
        ca_file: the CA (PEM) that signed the coordinator's certificate (``DISTCB_TLS_CA``):
            a ``host:port`` address is then dialled with ``wss://``. A ``wss://`` URL
            without it trusts the system's CAs.

    Raises:
        ConnectionClosed: the coordinator could not be reached in time (names address and
            cause), or its certificate did not verify (names the CA file).
        ProtocolError: the coordinator rejected the token.
        ValueError: a ``ws://`` URL with a CA file, or a CA file that does not load.
    """
    config = config or Config()
    url = _worker_url(address_or_url, secure=ca_file is not None)
    tls_context = tls.client_context(ca_file) if url.startswith("wss:") else None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.connect_timeout_s
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_s)
    )
    delay_s = 0.02
    last_error: BaseException | None = None
    try:
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    ws = await session.ws_connect(
                        url,
                        headers={"Authorization": f"Bearer {token}"},
                        max_msg_size=config.max_message_bytes,
                        heartbeat=None,
                        ssl=tls_context if tls_context is not None else True,
                        timeout=aiohttp.ClientWSTimeout(ws_close=config.heartbeat_interval_s * 2),
                    )
                break
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status == 400 and await _plaintext_to_tls(url, exc):
                    raise ConnectionClosed(
                        f"the coordinator at {url} refused the plaintext upgrade: "
                        f"{tls.PLAINTEXT_TO_TLS}"
                    ) from exc
                if exc.status == 503:  # over a connection bound: busy for now, retried
                    last_error = exc
                elif exc.status == 401:
                    raise ProtocolError(
                        f"token rejected by the coordinator at {url}; pass the token the "
                        "coordinator was started with (WebSocketServer.token)"
                    ) from None
                else:
                    raise ConnectionClosed(
                        f"the coordinator at {url} refused the websocket upgrade: HTTP "
                        f"{exc.status} {exc.message}"
                    ) from exc
            except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
                trust = f"the CA in {ca_file!r} ({tls.ENV_CA})" if ca_file else "the system's CAs"
                raise ConnectionClosed(
                    f"TLS with the coordinator at {url} failed: {_describe(exc)}. Its "
                    f"certificate must be signed by {trust} and name the host dialled."
                ) from exc
            except aiohttp.ClientConnectorError as exc:  # refused, or not resolvable yet
                last_error = exc
            except TimeoutError:
                pass
            except (aiohttp.ClientError, OSError) as exc:
                if await _plaintext_to_tls(url, exc):
                    raise ConnectionClosed(
                        f"the coordinator at {url} dropped the plaintext upgrade: "
                        f"{tls.PLAINTEXT_TO_TLS}"
                    ) from exc
                raise ConnectionClosed(
                    f"could not connect to the coordinator at {url}: {exc}"
                ) from exc
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                cause = f"last error: {_describe(last_error)}" if last_error else "no answer"
                raise ConnectionClosed(
                    f"could not reach the coordinator at {url} within Config.connect_timeout_s="
                    f"{config.connect_timeout_s:g} s ({cause}). Check that it runs and that the "
                    "address is right, or raise connect_timeout_s."
                ) from last_error
            await asyncio.sleep(min(delay_s, remaining_s))
            delay_s = min(delay_s * 2, 1.0)
    except BaseException:
        await session.close()
        raise
    return WebSocketConnection(
        ws,
        peer,
        config,
        receive_timeout_s=config.heartbeat_timeout_s,
        decode=decode_from_coordinator,
        drop=session.close,
    )


async def _plaintext_to_tls(url: str, error: BaseException) -> bool:
    """A ws:// upgrade dropped by a coordinator that answers TLS handshakes."""
    parsed = URL(url)
    if parsed.scheme != "ws" or parsed.host is None or parsed.port is None:
        return False
    if not isinstance(
        error,
        aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | aiohttp.WSServerHandshakeError,
    ):
        return False
    return await tls.speaks_tls(parsed.host, parsed.port, timeout_s=5.0)


def _worker_url(address_or_url: str, *, secure: bool = False) -> str:
    if "://" not in address_or_url:
        return f"{'wss' if secure else 'ws'}://{address_or_url}{WS_PATH}"
    url = URL(address_or_url)
    if url.scheme not in ("ws", "wss"):
        raise ValueError(
            f"the coordinator URL must be ws:// or wss://, received {address_or_url!r} "
            "(or pass 'host:port')"
        )
    if secure and url.scheme == "ws":
        raise ValueError(
            f"a CA file ({tls.ENV_CA}) was given for the plaintext URL {address_or_url!r}: "
            "dial wss:// (or 'host:port') to use TLS, or leave the CA out"
        )
    return str(url.with_path(WS_PATH) if url.path in ("", "/") else url)


def _describe(error: BaseException) -> str:
    os_error = getattr(error, "os_error", None)  # ClientConnectorError: say *why* it failed
    cause = os_error if isinstance(os_error, OSError) else error
    return f"{type(cause).__name__}: {cause}"
