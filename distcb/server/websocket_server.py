"""The coordinator's websocket server (aiohttp): authenticates workers and hands each
connection to `Coordinator.serve`.

Routes: ``GET /ws`` the worker channel, ``GET /status`` the coordinator's
`status()` as JSON plus the server's counters (both need ``Authorization:
Bearer <token>``, checked before the upgrade; ``/status`` also takes the status
page's cookie), ``GET /healthz`` liveness: the process is alive (no token),
``GET /readyz`` readiness: 200 while the coordinator accepts joins, or trains
with its barriers advancing (no `Config.stall_timeout_s` without progress), 503
otherwise (no token), and the status page: ``GET /``, ``GET /events``
(`distcb.server.status_page`).

What a peer without the token can hold is bounded (`distcb.server.admission`):
connections (`Config.max_connections`), the time to a complete request
(`Config.handshake_timeout_s`), and the rate of warnings about rejected
connections. After the upgrade a worker must join within
`Config.first_message_timeout_s`.

Off loopback the server needs TLS (``ssl=``, see `distcb.server.tls`): the
token would otherwise cross the network in plaintext. ``insecure=True`` allows
plain ``ws://`` there, with a warning.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from ssl import SSLContext
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aiohttp import WSCloseCode, web

from distcb.protocol import close_codes
from distcb.protocol.config import Config
from distcb.protocol.logs import to_json_value
from distcb.protocol.messages import decode_from_worker
from distcb.server.admission import Admission, connection_room
from distcb.server.status_page import StatusPage
from distcb.transport.websocket_client import WS_PATH
from distcb.transport.websocket_connection import WebSocketConnection

if TYPE_CHECKING:
    from distcb.coordinator.engine import Coordinator

__all__ = ["WS_PATH", "WebSocketServer", "is_loopback"]

logger = logging.getLogger("distcb.server")

_SHUTTING_DOWN = "the coordinator is shutting down"
_READY_PHASES = ("joining", "training")  # /readyz: accepting joins, or running the job


class WebSocketServer:
    """Serves one coordinator to its workers over websockets (aiohttp).

    Routes: ``GET /ws`` the worker channel (token required), ``GET /status`` the
    coordinator's `status()` and the server's counters as JSON (token required),
    ``GET /healthz`` liveness for probes (no token), ``GET /readyz`` readiness: 200
    while joining, or training with progress, 503 otherwise (no token).

    Args:
        coordinator: the coordinator each worker connection is handed to.
        host: the interface to bind; loopback unless the workers are elsewhere.
        port: the port; 0 picks a free one (see `address`).
        token: the job's shared secret. None generates one on loopback (see
            `token_generated`); binding beyond loopback without one raises ValueError.
        config: limits and timeouts; the coordinator's by default.
        ssl: the server's TLS context (`distcb.server.tls.server_context`): workers
            then connect with ``wss://``. Required beyond loopback unless `insecure`.
        insecure: allow plain ``ws://`` beyond loopback (the token then crosses the
            network in plaintext); logs a warning.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        config: Config | None = None,
        ssl: SSLContext | None = None,
        insecure: bool = False,
    ):
        self.token_generated = token is None
        if token is None:
            if not is_loopback(host):
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
        loopback = is_loopback(host)
        if ssl is None and not loopback and not insecure:
            raise ValueError(
                f"WebSocketServer(host={host!r}) would send the job's token across the network "
                "in plaintext: pass ssl=distcb.server.tls.server_context(cert_file, key_file) "
                "(the CLI: --tls-cert/--tls-key or DISTCB_TLS_CERT/DISTCB_TLS_KEY) and give the "
                "workers the CA (DISTCB_TLS_CA), or pass insecure=True (the CLI: --insecure) on a "
                "network you trust."
            )
        if ssl is None and not loopback:
            logger.warning(
                "serving on %s without TLS (insecure=True): the job's token and every message "
                "cross the network in plaintext",
                host,
            )
        self._coordinator = coordinator
        self._config = config or coordinator.config
        self._host = "127.0.0.1" if host == "localhost" else host  # one socket, one port
        self._port = port
        self._token = token
        self._token_bytes = token.encode()
        self._routes: list[web.RouteDef] = []
        self._page = StatusPage(
            coordinator,
            token,
            self.check_token,
            config=self._config,
            authenticate=self._authenticate,
        )
        self._runner: web.AppRunner | None = None
        self._address: str | None = None
        self._connections: set[WebSocketConnection] = set()
        self._closed = False
        self._ssl = ssl
        self._server: asyncio.Server | None = None
        self._admission: Admission | None = None
        self._timers: set[asyncio.Task[None]] = set()

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
        """The workers' websocket URL, ``ws://host:port/ws`` (``wss://`` with TLS)."""
        scheme = "wss" if self._ssl is not None else "ws"
        return f"{scheme}://{self.address}{WS_PATH}"

    def statistics(self) -> dict[str, Any]:
        """Connections open, their peak and cap, and rejected connections by kind."""
        if self._admission is None:
            return {}
        return {**self._admission.statistics(), "tls": self._ssl is not None}

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
        config = self._config
        app = web.Application(middlewares=[self._admitted])
        app.router.add_get(WS_PATH, self._serve_worker)
        app.router.add_get("/status", self._serve_status)
        app.router.add_get("/healthz", self._serve_health)
        app.router.add_get("/readyz", self._serve_ready)
        app.router.add_routes(self._page.routes())
        app.router.add_routes(self._routes)
        runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=config.heartbeat_interval_s * 2,
            keepalive_timeout=config.handshake_timeout_s,  # idle between two requests
            handle_signals=False,
        )
        await runner.setup()
        self._runner = runner
        room, lowered = connection_room(config.max_connections)
        if lowered is not None:
            level = logging.WARNING if room < self._coordinator.world_size + 16 else logging.INFO
            logger.log(level, "%s", lowered)
        loop = asyncio.get_running_loop()
        # TLS is set up per connection by the admission (plain HTTP on the TLS port gets a
        # clear answer; a handshake's slot is freed when its connection ends).
        admission = Admission(runner.server, config, room, ssl_context=self._ssl)  # type: ignore[arg-type]
        self._admission = admission
        admission.watch_accept_errors(loop)
        try:
            self._server = await loop.create_server(
                admission,
                self._host,
                self._port,
                backlog=128,
                reuse_address=True,
            )
        except BaseException:
            await self.aclose()
            raise
        host, port = self._server.sockets[0].getsockname()[:2]
        self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def aclose(self) -> None:
        """Close every worker connection, then stop listening. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for timer in list(self._timers):
            timer.cancel()
        await self._page.close()  # ends the status page's event streams
        await asyncio.gather(
            *(c.close(_SHUTTING_DOWN, code=WSCloseCode.GOING_AWAY) for c in list(self._connections))
        )
        if self._server is not None:
            self._server.close()
        if self._admission is not None:
            self._admission.close()
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

    @web.middleware
    async def _admitted(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self._admission is not None:
            self._admission.request_arrived(request.transport)
        return await handler(request)

    def _authenticate(self, request: web.Request) -> None:
        if self._admission is not None:
            self._admission.authenticate(request.transport)

    def check_token(self, request: web.Request) -> web.Response | None:
        """None when `request` carries the job's token (``Authorization: Bearer``), else the
        401 answer to send (counted and rate-limited in the log, never the token)."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), self._token_bytes
        ):
            self._authenticate(request)  # a token holder: out of the anonymous pool
            return None
        if self._admission is not None:
            self._admission.rejections.reject(
                "token",
                f"{request.method} {request.path} from {request.remote}: missing or wrong token",
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
            decode=functools.partial(decode_from_worker, config=self._config),
            drop=drop,
        )
        self._connections.add(connection)
        overdue = asyncio.get_running_loop().call_later(
            self._config.first_message_timeout_s, self._join_overdue, connection, where
        )
        try:
            if self._closed:
                await connection.close(_SHUTTING_DOWN, code=WSCloseCode.GOING_AWAY)
            else:
                await self._coordinator.serve(connection)
        finally:
            overdue.cancel()
            self._connections.discard(connection)
            await connection.close("the coordinator is done with this connection")
        return ws

    def _join_overdue(self, connection: WebSocketConnection, where: str) -> None:
        """No message within `Config.first_message_timeout_s` of the upgrade: cut it off."""
        if connection.received or connection.closed:
            return
        timeout_s = self._config.first_message_timeout_s
        reason = f"no join within Config.first_message_timeout_s={timeout_s:g} s"
        if self._admission is not None:
            self._admission.rejections.reject("join_timeout", f"{where}: {reason}")
        task = asyncio.get_running_loop().create_task(
            connection.close(reason, code=close_codes.JOIN_TIMEOUT)
        )
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def _serve_status(self, request: web.Request) -> web.Response:
        denied = self._page.allowed(request)  # the token, or the status page's cookie
        if denied is not None:
            return denied
        status = {**self._page.status(), "server": self.statistics()}
        body = json.dumps(to_json_value(status), allow_nan=False)
        return web.Response(text=body, content_type="application/json")

    async def _serve_health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _serve_ready(self, request: web.Request) -> web.Response:
        coordinator = self._coordinator
        phase = coordinator.phase.value
        body: dict[str, Any] = {"ready": False, "phase": phase}
        since = coordinator.waiting_since()
        stalled_s = 0.0 if since is None else time.monotonic() - since
        if stalled_s > self._config.stall_timeout_s:
            body["stalled_s"] = round(stalled_s, 1)  # the watchdog is failing the job now
        else:
            body["ready"] = (
                phase in _READY_PHASES and coordinator.failure is None and not self._closed
            )
        return web.json_response(body, status=200 if body["ready"] else 503)


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (binding there needs neither a token nor TLS)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere
