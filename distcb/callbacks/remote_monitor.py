"""RemoteMonitor: POST each epoch's aggregated logs to a server, never blocking training.

Wire format, as ``keras.callbacks.RemoteMonitor`` sends it: ``POST root + path``
with the form field ``field`` holding ``json.dumps({"epoch": epoch, **logs})``
(``application/x-www-form-urlencoded``), or that JSON as the body with
``send_as_json=True`` (``application/json``). Numpy scalars and one-element
arrays are unwrapped to Python numbers (Keras's ``.item()``), larger arrays to
lists (on which Keras fails). Unlike Keras, non-finite floats (NaN,
±inf) are sent as JSON ``null``, so every body is valid JSON (Keras sends a
bare ``NaN`` in forms and fails to send at all with ``send_as_json``), and a
value JSON cannot represent is sent as its ``str()``.

How it stays out of training's way: the hook encodes the body (microseconds)
and hands it to an event loop (the coordinator's, or a private one on a
background thread when no runtime was lent). One sender task posts the bodies
in order through one ``aiohttp.ClientSession``; each request has its own
``ClientTimeout``. The queue is bounded: when it is full the oldest body is
dropped and counted. Connection errors, timeouts and 5xx answers are retried up
to ``max_retries`` times with exponential backoff and jitter; 4xx answers are
not retried. At the end of training the queue is flushed under a deadline
(``aclose``, awaited by the coordinator; without a runtime, ``on_train_end``
waits for it and then stops the private loop); what is still unsent then is
counted as failed.

Failures are reported through :mod:`logging` (logger
``distcb.callbacks.remote_monitor``), once per kind of failure and monitor,
naming the real cause (the status and body of the answer, the connection
error, the timeout setting); later failures of that kind are only counted in
:meth:`RemoteMonitor.statistics`. Logging rather than ``warnings.warn``: the
failures happen on the event loop, not on the caller's stack, and the
warnings filter's own de-duplication would hide or repeat them by message text
instead of by kind.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import random
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np

from distcb.callbacks.base import Callback, Logs
from distcb.callbacks.extension import Runtime
from distcb.protocol.config import Config

logger = logging.getLogger(__name__)

_RETRYABLE = frozenset({"timeout", "connection", "server_error"})
_MAX_BACKOFF_S = 30.0
# Share of Config.sink_close_timeout_s spent flushing, leaving time to close the session
# before the coordinator's own deadline.
_FLUSH_SHARE = 0.8


@dataclass(frozen=True)
class RemoteMonitorStatistics:
    """Counts of a RemoteMonitor's posts.

    Attributes:
        sent: posts the server accepted (status < 400).
        dropped: posts dropped unsent because the queue was full (the oldest go first).
        failed: posts given up on: retries exhausted, a 4xx answer, or still unsent
            at the close deadline.
        retried: retry attempts made, over all posts.
        queued: posts waiting in the queue now.
        in_flight: posts being sent now (0 or 1).
    """

    sent: int
    dropped: int
    failed: int
    retried: int
    queued: int
    in_flight: int


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        # One value unwraps to a scalar, as Keras's .item() does; larger arrays become lists.
        value = value.item() if value.size == 1 else value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


class RemoteMonitor(Callback):
    """Stream epoch logs to an HTTP server (``keras.callbacks.RemoteMonitor``), off the hot path.

    Args:
        root: root URL of the server.
        path: path relative to `root` that receives the posts.
        field: the form field that holds the JSON (unused with `send_as_json`).
        headers: extra HTTP headers.
        send_as_json: send the JSON as the body (``application/json``) instead of a form.
        timeout_s: limit of one request, connection included.
        queue_size: how many posts may wait; beyond it the oldest is dropped.
        max_retries: retries of a post after a connection error, a timeout or a 5xx answer.
        retry_backoff_s: delay before the first retry; it doubles on each retry
            (capped at 30 s), each delay drawn uniformly from its upper half.
        close_timeout_s: deadline of the final flush at the end of training; by
            default 80% of ``Config.sink_close_timeout_s``.
    """

    decides_on_batch = False
    observes_only = True  # runs after the workers are released (DESIGN principle 3)

    def __init__(
        self,
        root: str = "http://localhost:9000",
        path: str = "/publish/epoch/end/",
        field: str = "data",
        headers: dict[str, str] | None = None,
        send_as_json: bool = False,
        *,
        timeout_s: float = 10.0,
        queue_size: int = 64,
        max_retries: int = 3,
        retry_backoff_s: float = 0.5,
        close_timeout_s: float | None = None,
    ):
        super().__init__()
        for name, value in (("timeout_s", timeout_s), ("retry_backoff_s", retry_backoff_s)):
            if not value > 0:
                raise ValueError(f"RemoteMonitor {name} must be > 0 seconds, received {value!r}.")
        if close_timeout_s is not None and not close_timeout_s > 0:
            raise ValueError(
                f"RemoteMonitor close_timeout_s must be > 0, received {close_timeout_s!r}."
            )
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(
                f"RemoteMonitor queue_size must be an integer >= 1, received {queue_size!r}."
            )
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(
                f"RemoteMonitor max_retries must be an integer >= 0, received {max_retries!r}."
            )
        self.root = root
        self.path = path
        self.field = field
        self.headers = headers
        self.send_as_json = send_as_json
        self.timeout_s = float(timeout_s)
        self.queue_size = queue_size
        self.max_retries = max_retries
        self.retry_backoff_s = float(retry_backoff_s)
        self.close_timeout_s = close_timeout_s

        self._runtime: Runtime | None = None
        # The private loop used when no runtime was lent, and its thread.
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._own_thread: threading.Thread | None = None
        # Everything below is touched on the sending loop only (counters are read anywhere).
        self._queue: collections.deque[bytes] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._sender: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closing = False
        self._warned: set[str] = set()
        self._sent = self._dropped = self._failed = self._retried = self._in_flight = 0

    @property
    def url(self) -> str:
        return self.root + self.path

    def statistics(self) -> RemoteMonitorStatistics:
        """How many posts were sent, dropped, failed, retried, and are waiting."""
        return RemoteMonitorStatistics(
            sent=self._sent,
            dropped=self._dropped,
            failed=self._failed,
            retried=self._retried,
            queued=len(self._queue),
            in_flight=self._in_flight,
        )

    def set_runtime(self, runtime: Runtime) -> None:
        """Receive the coordinator's runtime: posts then go out from its event loop."""
        self._runtime = runtime

    # ------------------------------------------------------------------ hooks (callback thread)

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self._closing = False
        if self._runtime is None:
            self._start_own_loop()

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        body = self._encode(epoch, logs or {})
        if self._runtime is not None:
            self._runtime.call_soon(self._enqueue, body)
            return
        self._start_own_loop()
        assert self._own_loop is not None
        self._own_loop.call_soon_threadsafe(self._enqueue, body)

    def on_train_end(self, logs: Logs | None = None) -> None:
        # With a runtime the coordinator awaits aclose(); without one, flush and stop here.
        loop, thread = self._own_loop, self._own_thread
        if self._runtime is not None or loop is None or thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self.aclose(), loop)
        try:
            future.result(timeout=self._flush_deadline_s() + 5.0)
        except TimeoutError:  # aclose has its own deadline; this only guards against a bug
            future.cancel()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5.0)
        if not thread.is_alive():
            loop.close()
        self._own_loop = self._own_thread = None

    async def aclose(self) -> None:
        """Flush the queue under the close deadline, then close the HTTP session."""
        sender, self._sender = self._sender, None
        self._closing = True
        try:
            if sender is not None:
                assert self._wakeup is not None
                self._wakeup.set()
                await asyncio.wait({sender}, timeout=self._flush_deadline_s())
        finally:
            if sender is not None and not sender.done():
                abandoned = len(self._queue) + self._in_flight
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
                self._queue.clear()
                self._failed += abandoned
                self._warn_once(
                    "close_deadline",
                    f"{abandoned} post(s) to {self.url} were still unsent when the close "
                    f"deadline of {self._flush_deadline_s():.3g} s passed and are given up "
                    "(RemoteMonitor close_timeout_s, or Config.sink_close_timeout_s).",
                )
            self._wakeup = None  # bound to this loop; a later fit may run on another
            session, self._session = self._session, None
            if session is not None:
                await session.close()

    # ------------------------------------------------------------------ encoding (callback thread)

    def _encode(self, epoch: int, logs: Logs) -> bytes:
        send: dict[str, Any] = {"epoch": epoch}
        for key, value in logs.items():
            send[key] = _jsonable(value)
        text = json.dumps(send, default=str)
        if self.send_as_json:
            return text.encode("utf-8")
        return urllib.parse.urlencode([(self.field, text)]).encode("ascii")

    def _request_headers(self) -> dict[str, str]:
        headers = dict(self.headers or {})
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = (
                "application/json" if self.send_as_json else "application/x-www-form-urlencoded"
            )
        return headers

    def _flush_deadline_s(self) -> float:
        if self.close_timeout_s is not None:
            return self.close_timeout_s
        config = Config() if self._runtime is None else self._runtime.config
        return float(config.sink_close_timeout_s) * _FLUSH_SHARE

    def _start_own_loop(self) -> None:
        if self._own_loop is not None:
            return
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=loop.run_forever, name="distcb-remote-monitor", daemon=True
        )
        thread.start()
        self._own_loop, self._own_thread = loop, thread

    # ------------------------------------------------------------------ sending (event loop)

    def _enqueue(self, body: bytes) -> None:
        if self._closing:
            self._dropped += 1
            self._warn_once("after_close", "a post arrived after the monitor was closed; dropped.")
            return
        if len(self._queue) >= self.queue_size:
            self._queue.popleft()
            self._dropped += 1
            self._warn_once(
                "queue_full",
                f"the queue of {self.queue_size} posts is full (the server at {self.url} is "
                "slower than the epochs); dropping the oldest (RemoteMonitor queue_size).",
            )
        self._queue.append(body)
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.set()
        if self._sender is None:
            coro = self._send_loop(self._wakeup)
            name = "distcb-remote-monitor"
            if self._runtime is not None:
                self._sender = self._runtime.spawn(coro, name)
            else:
                self._sender = asyncio.get_running_loop().create_task(coro, name=name)

    async def _send_loop(self, wakeup: asyncio.Event) -> None:
        while True:
            while self._queue:
                body = self._queue.popleft()
                self._in_flight = 1
                try:
                    await self._post(body)
                except Exception as exc:  # keep the sender alive whatever a post does
                    self._failed += 1
                    self._warn_once("unexpected", f"POST {self.url} failed: {exc!r}.")
                finally:
                    self._in_flight = 0
            if self._closing:
                return
            wakeup.clear()
            await wakeup.wait()

    async def _post(self, body: bytes) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._retried += 1
                delay = min(_MAX_BACKOFF_S, self.retry_backoff_s * 2 ** (attempt - 1))
                await asyncio.sleep(random.uniform(delay / 2, delay))
            kind, cause = await self._attempt(self._session, body)
            if kind is None:
                self._sent += 1
                return
            retryable = kind in _RETRYABLE
            will_retry = retryable and attempt < self.max_retries
            self._warn_once(
                kind,
                f"POST {self.url} failed: {cause}. "
                + (
                    f"Retrying (up to {self.max_retries} times)."
                    if will_retry
                    else "Not retried."
                    if not retryable
                    else f"Gave up after {self.max_retries} retries (RemoteMonitor max_retries)."
                ),
            )
            if not will_retry:
                break
        self._failed += 1

    async def _attempt(self, session: aiohttp.ClientSession, body: bytes) -> tuple[str | None, str]:
        """One request: (None, "") on success, else (kind of failure, its cause)."""
        try:
            async with session.post(
                self.url,
                data=body,
                headers=self._request_headers(),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as response:
                if response.status < 400:
                    return None, ""
                text = (await response.text(errors="replace"))[:200]
                kind = "server_error" if response.status >= 500 else "client_error"
                return (
                    kind,
                    f"the server answered HTTP {response.status} {response.reason}: {text!r}",
                )
        except TimeoutError:
            return "timeout", f"no answer within {self.timeout_s:g} s (RemoteMonitor timeout_s)"
        except (aiohttp.ClientConnectionError, OSError) as exc:
            return "connection", f"{type(exc).__name__}: {exc}"
        except aiohttp.ClientError as exc:
            return "request_error", f"{type(exc).__name__}: {exc}"

    def _warn_once(self, kind: str, message: str) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        logger.warning(
            "RemoteMonitor: %s Later failures of this kind are only counted "
            "(RemoteMonitor.statistics()).",
            message,
        )
