"""The coordinator's websocket server (aiohttp): authenticates workers and hands each
connection to `Coordinator.serve`.

Routes: ``GET /ws`` the worker channel, ``GET /status`` the coordinator's
`status()` as JSON (both need ``Authorization: Bearer <token>``, checked
before the upgrade; ``/status`` also takes the status page's cookie), ``GET /healthz``
liveness for probes (no token), ``GET /readyz`` readiness: 200 while the coordinator
accepts joins or trains, 503 otherwise (no token), and the status page: ``GET /``,
``GET /events`` (`distcb.transport.status_page`).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import secrets
from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, web

from distcb.protocol.config import Config
from distcb.protocol.messages import decode_from_worker
from distcb.transport.status_page import StatusPage
from distcb.transport.websocket_connection import WebSocketConnection

if TYPE_CHECKING:  # workers import this package too; they need no coordinator
    from distcb.coordinator.engine import Coordinator

__all__ = ["WS_PATH", "WebSocketServer"]

logger = logging.getLogger("distcb.transport.websocket")

WS_PATH = "/ws"
_SHUTTING_DOWN = "the coordinator is shutting down"
_READY_PHASES = ("joining", "training")  # /readyz: accepting joins, or running the job


class WebSocketServer:
    """Serves one coordinator to its workers over websockets (aiohttp).

    Routes: ``GET /ws`` the worker channel (token required), ``GET /status`` the
    coordinator's `status()` as JSON (token required), ``GET /healthz`` liveness
    for probes (no token), ``GET /readyz`` readiness: 200 while joining or training,
    503 otherwise (no token).

    Args:
        coordinator: the coordinator each worker connection is handed to.
        host: the interface to bind; loopback unless the workers are elsewhere.
        port: the port; 0 picks a free one (see `address`).
        token: the job's shared secret. None generates one on loopback; binding
            beyond loopback without one raises ValueError.
        config: limits and timeouts; the coordinator's by default.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        config: Config | None = None,
    ):
        if token is None:
            if not _is_loopback(host):
                raise ValueError(
                    f"WebSocketServer(host={host!r}) would accept connections from other "
                    "machines, so it needs a token: pass token=secrets.token_urlsafe(32) (or "
                    "your own secret) and give the same token to every worker. Without a "
                    "token, bind a loopback host such as '127.0.0.1'."
                )
            token = secrets.token_urlsafe(32)
        elif not token or not token.isascii() or not token.isprintable() or " " in token:
            raise ValueError(
                "token must be a non-empty string of printable ASCII without spaces (it travels "
                "in an HTTP header); secrets.token_urlsafe(32) makes a good one"
            )
        self._coordinator = coordinator
        self._config = config or coordinator.config
        self._host = "127.0.0.1" if host == "localhost" else host  # one socket, one port
        self._port = port
        self._token = token
        self._token_bytes = token.encode()
        self._routes: list[web.RouteDef] = []
        self._page = StatusPage(coordinator, token, self.check_token)
        self._runner: web.AppRunner | None = None
        self._address: str | None = None
        self._connections: set[WebSocketConnection] = set()
        self._closed = False

    @property
    def token(self) -> str:
        return self._token

    @property
    def address(self) -> str:
        """``host:port`` actually bound (after `start`)."""
        if self._address is None:
            raise RuntimeError("the server has no address before `await server.start()`")
        return self._address

    @property
    def url(self) -> str:
        """The workers' websocket URL, ``ws://host:port/ws``."""
        return f"ws://{self.address}{WS_PATH}"

    def add_routes(self, routes: Sequence[web.RouteDef]) -> None:
        """Serve more routes (a launcher's rendezvous); before `start`. They authenticate
        with `check_token`."""
        if self._runner is not None:
            raise RuntimeError("add_routes must come before start()")
        self._routes.extend(routes)

    async def start(self) -> None:
        """Bind and start serving. Raises OSError when the address is taken."""
        if self._runner is not None or self._closed:
            raise RuntimeError("a WebSocketServer starts once")
        app = web.Application()
        app.router.add_get(WS_PATH, self._serve_worker)
        app.router.add_get("/status", self._serve_status)
        app.router.add_get("/healthz", self._serve_health)
        app.router.add_get("/readyz", self._serve_ready)
        app.router.add_routes(self._page.routes())
        app.router.add_routes(self._routes)
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=self._config.heartbeat_interval_s * 2
        )
        await runner.setup()
        self._runner = runner
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await self.aclose()
            raise
        host, port = runner.addresses[0][:2]
        self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def aclose(self) -> None:
        """Close every worker connection, then stop listening. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._page.close()  # ends the status page's event streams
        await asyncio.gather(
            *(c.close(_SHUTTING_DOWN, code=WSCloseCode.GOING_AWAY) for c in list(self._connections))
        )
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> WebSocketServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def check_token(self, request: web.Request) -> web.Response | None:
        """None when `request` carries the job's token (``Authorization: Bearer``), else the
        401 answer to send (the attempt is logged, never the token)."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), self._token_bytes
        ):
            return None
        logger.warning(
            "rejected %s %s from %s: missing or wrong token",
            request.method,
            request.path,
            request.remote,
        )
        return web.json_response(
            {
                "error": "missing or wrong token; send the job's token as "
                "'Authorization: Bearer <token>'"
            },
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def _serve_worker(self, request: web.Request) -> web.StreamResponse:
        denied = self.check_token(request)
        if denied is not None:
            return denied
        if self._closed:
            return web.json_response({"error": _SHUTTING_DOWN}, status=503)
        ws = web.WebSocketResponse(
            max_msg_size=self._config.max_message_bytes,
            heartbeat=None,
            timeout=self._config.heartbeat_interval_s * 2,
        )
        await ws.prepare(request)
        peername = request.transport.get_extra_info("peername") if request.transport else None
        where = f"{peername[0]}:{peername[1]}" if peername else str(request.remote)
        transport = request.transport

        async def drop() -> None:
            if transport is not None:
                transport.close()

        connection = WebSocketConnection(
            ws,
            f"worker at {where}",
            self._config,
            receive_timeout_s=None,
            decode=decode_from_worker,
            drop=drop,
        )
        self._connections.add(connection)
        try:
            if self._closed:
                await connection.close(_SHUTTING_DOWN, code=WSCloseCode.GOING_AWAY)
            else:
                await self._coordinator.serve(connection)
        finally:
            self._connections.discard(connection)
            await connection.close("the coordinator is done with this connection")
        return ws

    async def _serve_status(self, request: web.Request) -> web.Response:
        denied = self._page.allowed(request)  # the token, or the status page's cookie
        if denied is not None:
            return denied
        return web.Response(text=self._page.status_json(), content_type="application/json")

    async def _serve_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _serve_ready(self, request: web.Request) -> web.Response:
        phase = self._coordinator.phase.value
        ready = phase in _READY_PHASES and not self._closed
        return web.json_response({"ready": ready, "phase": phase}, status=200 if ready else 503)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere
