"""The coordinator's live status page, served by its HTTP server (`WebSocketServer`).

Routes (everything is in the package: no CDN, no build step):

``GET /``
    the page (``static/status.html``) once signed in, else a login form.
    ``GET /?token=<token>`` signs in and redirects to ``/`` (the token leaves
    the address bar and the history).
``POST /login``
    the login form (field ``token``). ``GET /logout`` forgets the sign-in.
``GET /events``
    server-sent events: the status (what ``GET /status`` answers) every
    `interval_s`, and ``bye`` when the coordinator shuts down.
``GET /static/<file>``
    the page's script and style sheet (no job data: no sign-in needed).

Signing in sets an HttpOnly, SameSite=Strict cookie whose value is a random
session value made for that sign-in (not the token: it opens the read-only
views, ``/``, ``/events`` and ``/status``, never the workers' channel). The
server keeps only a hash of it, for `Config.status_session_s` (the cookie's
Max-Age too), at most `Config.max_status_sessions` of them (the oldest goes
first); ``/logout`` forgets it. Nothing logs a token: rejected attempts are
logged with their path only (never the query string), at most once per
`Config.rejection_log_interval_s`, and the server keeps no access log.

``/events`` streams are bounded (`Config.max_status_streams`); the status is
rendered once per interval for all of them, and a viewer that does not read
its stream within `Config.status_write_timeout_s` is dropped. Every page carries a
Content-Security-Policy that allows only this server's own script, style and
connections; the script builds the DOM with ``textContent`` (metric names and
hosts come from workers).

The page is also a `JobListener`: it keeps, for each metric, the per-worker
spread (min, max and their ranks) of every released epoch (the last
`MAX_EPOCHS`), which ``/status`` then carries as ``epoch_spread_history``,
with ``epoch_times`` (when each epoch was released, wall clock).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import html
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from distcb.protocol.config import Config
from distcb.protocol.log_limit import LogLimiter
from distcb.protocol.logs import to_json_value

if TYPE_CHECKING:
    from distcb.coordinator.engine import Coordinator
    from distcb.coordinator.model_proxy import DecisionRecord

__all__ = ["COOKIE", "StatusPage"]

logger = logging.getLogger("distcb.server")

COOKIE = "distcb_status"
MAX_EPOCHS = 500
_STATIC = {"status.js": "text/javascript", "status.css": "text/css"}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _asset(name: str) -> str:
    return (resources.files("distcb.server") / "static" / name).read_text(encoding="utf-8")


class StatusPage:
    """The page, its login and its event stream, for one coordinator.

    Args:
        coordinator: whose `status()` the page shows (the page listens to its epochs).
        token: the job's token.
        check_token: the server's bearer check (``/status`` and ``/events`` accept a
            bearer token as well as the cookie).
        interval_s: seconds between two events of a stream.
        config: the bounds on sign-ins and streams (`status_session_s`,
            `max_status_sessions`, `max_status_streams`, `status_write_timeout_s`).
        authenticate: called with a request that carried the page's cookie (the server
            takes its connection out of the anonymous pool).
    """

    def __init__(
        self,
        coordinator: Coordinator,
        token: str,
        check_token: Callable[[web.Request], web.Response | None],
        *,
        interval_s: float = 1.0,
        config: Config | None = None,
        authenticate: Callable[[web.Request], None] = lambda request: None,
    ):
        self._coordinator = coordinator
        self._token = token.encode()
        self.config = config or coordinator.config
        self._sessions: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._check_token = check_token
        self._authenticate = authenticate
        self._log = LogLimiter(logger, self.config.rejection_log_interval_s)
        self.interval_s = interval_s
        self.max_streams = self.config.max_status_streams
        self._streams = 0
        self._rendered: tuple[float, bytes] | None = None  # (loop time, the status event)
        self._closing = asyncio.Event()
        self._spread: dict[str, collections.deque[dict[str, Any]]] = {}
        self._epoch_times: collections.deque[tuple[int, float]] = collections.deque(
            maxlen=MAX_EPOCHS
        )
        coordinator.add_listener(self)

    # ------------------------------------------------------------------ JobListener

    def epoch_released(
        self, epoch: int, logs: dict[str, Any], records: Sequence[DecisionRecord]
    ) -> None:
        self._epoch_times.append((epoch, time.time()))
        for name, spread in self._coordinator.state.epoch_spread.items():
            history = self._spread.setdefault(name, collections.deque(maxlen=MAX_EPOCHS))
            history.append({"epoch": epoch, **spread.to_dict()})

    def saved(self, message: Any) -> None:
        pass

    def restarting(self, attempt: int, failure: BaseException) -> None:
        pass  # the epochs replayed after a restart are released (and recorded) again

    def ended(self, failure: BaseException | None) -> None:
        pass

    # ------------------------------------------------------------------ the data

    def status(self) -> dict[str, Any]:
        """The coordinator's status, with the spread of each metric over the epochs."""
        status = self._coordinator.status()
        status["epoch_spread_history"] = {k: list(v) for k, v in self._spread.items()}
        status["epoch_times"] = [{"epoch": e, "time": t} for e, t in self._epoch_times]
        return status

    def status_json(self) -> str:
        return json.dumps(to_json_value(self.status()), allow_nan=False)

    def signed_in(self, request: web.Request) -> bool:
        """The request's cookie is a live session (made by a sign-in, not expired, not
        logged out)."""
        key = _session_key(request.cookies.get(COOKIE, ""))
        expires = self._sessions.get(key)
        if expires is None:
            return False
        if time.monotonic() >= expires:
            del self._sessions[key]
            return False
        return True

    def _new_session(self) -> str:
        """A random session value for one sign-in; the server keeps its hash."""
        value = secrets.token_urlsafe(32)
        self._sessions[_session_key(value)] = time.monotonic() + self.config.status_session_s
        while len(self._sessions) > self.config.max_status_sessions:
            self._sessions.popitem(last=False)  # the oldest sign-in goes first
        return value

    def allowed(self, request: web.Request) -> web.Response | None:
        """None for the cookie or the bearer token, else the 401 answer."""
        if self.signed_in(request):
            self._authenticate(request)
            return None
        return self._check_token(request)

    # ------------------------------------------------------------------ HTTP

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self._serve_page),
            web.post("/login", self._serve_login),
            web.get("/logout", self._serve_logout),
            web.get("/events", self._serve_events),
            web.get("/static/{name}", self._serve_static),
        ]

    async def close(self) -> None:
        """End every event stream (the server is shutting down)."""
        self._closing.set()

    def _login_page(self, message: str, status: int) -> web.Response:
        body = _asset("login.html").replace("<!--MESSAGE-->", html.escape(message))
        return web.Response(
            text=body, status=status, content_type="text/html", headers=_SECURITY_HEADERS
        )

    def _signed_in_redirect(self, request: web.Request) -> web.HTTPSeeOther:
        """The redirect to the page that sets the cookie (raise it: aiohttp's convention)."""
        response = web.HTTPSeeOther("/", headers=_SECURITY_HEADERS)
        response.set_cookie(
            COOKIE,
            self._new_session(),
            path="/",
            max_age=int(self.config.status_session_s),
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    def _token_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.strip().encode("utf-8", "replace"), self._token)

    async def _serve_page(self, request: web.Request) -> web.Response:
        given = request.query.get("token")
        if given is not None:
            if self._token_matches(given):
                raise self._signed_in_redirect(request)
            self._log_rejected(request)
            return self._login_page("Wrong token: sign in with the job's token.", 401)
        if not self.signed_in(request):
            return self._login_page("", 401)
        return web.Response(
            text=_asset("status.html"), content_type="text/html", headers=_SECURITY_HEADERS
        )

    async def _serve_login(self, request: web.Request) -> web.Response:
        form = await request.post()
        given = form.get("token")
        if isinstance(given, str) and self._token_matches(given):
            raise self._signed_in_redirect(request)
        self._log_rejected(request)
        return self._login_page("Wrong token: sign in with the job's token.", 401)

    def _log_rejected(self, request: web.Request) -> None:
        self._log.log(
            logging.WARNING,
            "sign_in",
            "rejected a sign-in to the status page (%s %s) from %s: wrong token",
            request.method,
            request.path,  # never the query string: it holds the token
            request.remote,
        )

    async def _serve_logout(self, request: web.Request) -> web.Response:
        self._sessions.pop(_session_key(request.cookies.get(COOKIE, "")), None)
        response = web.HTTPSeeOther("/", headers=_SECURITY_HEADERS)
        response.del_cookie(COOKIE, path="/")
        raise response

    async def _serve_static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        content_type = _STATIC.get(name)
        if content_type is None:  # a fixed list: no path reaches the file system
            raise web.HTTPNotFound()
        return web.Response(
            text=_asset(name), content_type=content_type, headers={"Cache-Control": "no-cache"}
        )

    async def _serve_events(self, request: web.Request) -> web.StreamResponse:
        denied = self.allowed(request)
        if denied is not None:
            return denied
        if self._streams >= self.max_streams:
            return web.json_response(
                {
                    "error": f"{self.max_streams} status streams are open already "
                    "(Config.max_status_streams); close one"
                },
                status=503,
            )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",
            }
        )
        self._streams += 1
        try:
            await response.prepare(request)
            await self._write(response, b"retry: 2000\n\n")
            while True:
                await self._write(response, self._status_event())
                if self._closing.is_set():
                    break  # that was the last picture of the job
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval_s):
                        await self._closing.wait()
            await self._write(response, b"event: bye\ndata: {}\n\n")
        except (ConnectionResetError, ConnectionError):
            pass  # the page went away
        except _SlowViewer:
            if request.transport is not None:
                request.transport.abort()  # what it did not read is dropped with it
        finally:
            self._streams -= 1
        return response

    def _status_event(self) -> bytes:
        """The status event, rendered at most once per half interval for every stream."""
        now = asyncio.get_running_loop().time()
        if self._rendered is None or now - self._rendered[0] >= self.interval_s / 2:
            event = f"event: status\ndata: {self.status_json()}\n\n".encode()
            self._rendered = (now, event)
        return self._rendered[1]

    async def _write(self, response: web.StreamResponse, data: bytes) -> None:
        """One write, within `Config.status_write_timeout_s` (a viewer that reads too slowly
        holds no more than the socket's buffer, and not for longer)."""
        try:
            async with asyncio.timeout(self.config.status_write_timeout_s):
                await response.write(data)
        except TimeoutError:
            raise _SlowViewer() from None


class _SlowViewer(Exception):
    """An ``/events`` viewer did not read its stream within the write timeout."""


def _session_key(value: str) -> bytes:
    """What the server keeps of a session value: its hash (a lookup by it leaks nothing
    about the values it holds)."""
    return hashlib.sha256(value.encode("utf-8", "replace")).digest()
