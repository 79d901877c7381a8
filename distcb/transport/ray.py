"""Ray transport: the coordinator is an async Ray actor; workers reach it through actor calls.

    # launcher (distcb.launch.ray_backend)
    actor = RayCoordinator.options(name=name).remote(callbacks, world_size=2, token=token)
    result = await actor.run.remote()

    # worker side (WorkerCallback)
    connection = await connect(f"ray:{name}", token, config=config)

The only distcb module importing ray at module level.

Wire: every message travels as the JSON-compatible dict of
`distcb.core.messages.encode` (Ray serialises plain dicts; our messages are
never pickled), checked as strict JSON against `Config.max_message_bytes`
before it reaches the coordinator. A worker pushes what it has to send in
batches, one actor call at a time per connection (what queued while a call was
in flight goes out together in the next), so a coalesced batch-log frame costs
one call at most; pushes holding only batch logs and heartbeats are paced to
one per ``PACE_FLUSHES * Config.flush_interval_s`` (20 ms by default), while an
epoch end, train end, save report or failure goes out at once. It long-polls
for the coordinator's messages (`poll` waits on that connection's outbox for
up to `Config.heartbeat_interval_s`).

Actor layout: `push`, `poll` and `run` share the default concurrency group,
whose event loop owns the `Coordinator`; `open`, `close`, `report_lost`,
`status`, `observe` and `ping` sit in the ``control`` group (own slots, own
thread) and hop onto the coordinator's loop, so they never queue behind log
ingestion.

Errors: Ray's (`RayActorError`, `ActorDiedError`, `GetTimeoutError`, ...) and
call timeouts become `ConnectionClosed` at this boundary; a worker whose actor
dies is reported by the launcher (`report_lost`), which the coordinator turns
into `WorkerLostError` naming its rank.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hmac
import logging
import math
import os
import secrets
import socket
import traceback
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar, cast

import ray
from ray import cloudpickle
from ray.exceptions import RayError

from distcb.callbacks.history import History
from distcb.core.config import Config
from distcb.core.coordinator import Coordinator
from distcb.core.errors import DistcbError, ProtocolError
from distcb.core.messages import BatchFrame, Heartbeat, Message, encode
from distcb.core.transport import ConnectionClosed
from distcb.transport.ray_channel import ServerConnection, decode_item

__all__ = ["SCHEME", "CoordinatorActor", "RayCoordinator", "connect", "parse_address"]

SCHEME = "ray"
# A push of batch logs or heartbeats only waits until PACE_FLUSHES flush intervals
# (Config.flush_interval_s) after the previous push: an actor call costs ~1 ms of
# the worker's time here, a websocket frame ~40 us.
PACE_FLUSHES = 4
CONTROL_GROUP = "control"
_T = TypeVar("_T")
logger = logging.getLogger("distcb.transport.ray")


def parse_address(address: str) -> tuple[str | None, str]:
    """``ray:<name>`` or ``ray:<namespace>/<name>`` -> (namespace or None, actor name)."""
    scheme, sep, rest = address.partition(":")
    if scheme != SCHEME or not sep or not rest:
        raise ValueError(
            f"a Ray coordinator address looks like 'ray:<actor name>' or "
            f"'ray:<namespace>/<actor name>', received {address!r}"
        )
    namespace, slash, name = rest.rpartition("/")
    return (namespace if slash else None), name


# --------------------------------------------------------------------------- coordinator side


class CoordinatorActor:
    """A `Coordinator` inside an async Ray actor; use it through `RayCoordinator`.

    Args:
        callbacks: the coordinator callbacks (pickled into the actor by Ray).
        world_size: the number of workers.
        config: a `Config` as a dict (`Config.to_dict`).
        token: the secret every worker presents when it opens its connection.
        stateful_metrics: metric names taken from the chief rather than averaged.
        observer: optional object that adds one callback after History
            (``observer.callback(actor)``) and answers `observe` calls with async
            methods taking this actor first (distcb.tune uses it).
        user_callbacks: how many of `callbacks` are the user's (their state is
            returned by `run`); default all.
    """

    def __init__(
        self,
        callbacks: Sequence[Any],
        *,
        world_size: int,
        config: dict[str, float] | None = None,
        token: str = "",
        stateful_metrics: Iterable[str] = (),
        observer: Any = None,
        user_callbacks: int | None = None,
    ):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self._loop = asyncio.get_running_loop()  # the default group's loop owns the coordinator
        self._config = Config.from_dict(config) if config else Config()
        self._token = token
        self._observer = observer
        self.changed = asyncio.Event()  # set on every message received (observers wait on it)
        chain = list(callbacks)
        self._user_count = len(chain) if user_callbacks is None else user_callbacks
        if observer is not None:
            if not any(isinstance(cb, History) for cb in chain):
                chain.append(History())  # the observer sees the logs as History records them
            chain.append(observer.callback(self))
        self.coordinator = Coordinator(
            chain, world_size=world_size, config=self._config, stateful_metrics=stateful_metrics
        )
        self._connections: dict[str, ServerConnection] = {}
        self._serving: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- data path (default group)

    async def push(self, conn_id: str, items: list[Any]) -> str | None:
        """Deliver a worker's messages in order; returns why the connection is closed, if it is."""
        connection = self._connections.get(conn_id)
        if connection is None:
            return "unknown connection (the coordinator does not know this session)"
        if connection.closed is not None:
            return connection.closed
        if not isinstance(items, list):
            connection.deliver([items])  # rejected by receive as a protocol error
        else:
            connection.deliver(items)
        return None

    async def poll(self, conn_id: str, wait_s: float) -> dict[str, Any]:
        """Long poll: the coordinator's messages for this connection, after up to `wait_s`."""
        connection = self._connections.get(conn_id)
        if connection is None:
            return {"messages": [], "closed": "unknown connection"}
        wait_s = max(0.0, min(float(wait_s), self._config.heartbeat_interval_s))
        return await connection.take(wait_s)

    async def run(self) -> dict[str, Any]:
        """Run the job; returns its outcome as a picklable dict (errors as values)."""
        error: BaseException | None = None
        history = None
        try:
            history = await self.coordinator.run()
        except DistcbError as exc:
            error = exc
        except Exception as exc:  # a bug or a raising callback: carry the text, not the object
            error = DistcbError(
                f"the coordinator raised {type(exc).__name__}: {exc}\n\n"
                + "".join(traceback.format_exception(exc))
            )
        finally:
            await self._stop_serving()
        coordinator = self.coordinator
        history = history or coordinator.history
        return {
            "error": error,
            "history": dict(history.history),
            "epoch": list(history.epoch),
            "worker_reports": dict(getattr(history, "worker_reports", {}) or {}),
            "decisions": [d.to_dict() for d in coordinator.decisions],
            "saved": [encode(s) for s in coordinator.saved],
            "callback_states": [
                callback_state(cb) for cb in coordinator.callbacks.callbacks[: self._user_count]
            ],
        }

    # ---------------------------------------------------------------- control group

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def open(self, token: str, peer: str) -> str:
        """A worker opens its channel; returns the connection id to push and poll with."""
        if not hmac.compare_digest(str(token).encode(), self._token.encode()):
            raise ProtocolError(f"{peer} presented a wrong job token")
        return await self._on_loop(self._open(str(peer)))

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def close(self, conn_id: str, reason: str = "") -> None:
        """The worker closes its channel (after its last push)."""
        await self._on_loop(self._close(conn_id, reason))

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def report_lost(self, rank: int, reason: str, traceback_text: str | None = None) -> None:
        """The launcher saw worker `rank` die."""

        async def report() -> None:
            self.coordinator.report_lost(rank, reason, traceback_text)

        await self._on_loop(report())

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def status(self) -> dict[str, Any]:
        async def status() -> dict[str, Any]:
            return self.coordinator.status()

        return await self._on_loop(status())

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def observe(self, method: str, *args: Any) -> Any:
        """Call ``observer.<method>(actor, *args)`` on the coordinator's loop."""
        if self._observer is None or method.startswith("_"):
            raise ValueError(f"this coordinator has no observer method {method!r}")
        return await self._on_loop(getattr(self._observer, method)(self, *args))

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def ping(self) -> str:
        return socket.gethostname()

    # ---------------------------------------------------------------- internals

    async def _on_loop(self, coro: Coroutine[Any, Any, _T]) -> _T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            return await coro
        future: concurrent.futures.Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wrap_future(future)

    async def _open(self, peer: str) -> str:
        conn_id = secrets.token_hex(16)
        connection = ServerConnection(conn_id, peer, self._config, self._on_message)
        self._connections[conn_id] = connection
        task = self._loop.create_task(self.coordinator.serve(connection), name=f"serve-{peer}")
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)
        return conn_id

    async def _close(self, conn_id: str, reason: str) -> None:
        connection = self._connections.get(conn_id)
        if connection is not None:
            connection.close_from_peer(reason)

    def _on_message(self, message: Message) -> None:
        self.changed.set()

    async def _stop_serving(self) -> None:
        for connection in list(self._connections.values()):
            await connection.close("job finished")
        if self._serving:
            _, pending = await asyncio.wait(
                set(self._serving), timeout=self._config.reply_timeout_s
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


RayCoordinator: Any = cast(Any, ray.remote)(concurrency_groups={CONTROL_GROUP: 16})(
    CoordinatorActor
)
"""`CoordinatorActor` as a Ray actor class (`.options(...).remote(...)`)."""


def callback_state(callback: Any) -> dict[str, Any]:
    """The attributes of `callback` that survive pickling, `model` excluded (for copy-back)."""
    state: dict[str, Any] = {}
    for name, value in vars(callback).items():
        if name in ("model", "_model"):
            continue
        try:
            cloudpickle.dumps(value)
        except Exception:  # open files, locks, sessions: stay behind
            continue
        state[name] = value
    return state


# --------------------------------------------------------------------------- worker side


class RayConnection:
    """A worker's end: pushes in ordered batches (one call in flight), long-polls for replies.

    Create it with `connect`.
    """

    def __init__(self, handle: Any, conn_id: str, config: Config, peer: str):
        self._handle = handle
        self._conn_id = conn_id
        self._config = config
        self._peer = peer
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._urgent = False
        self._pace_s = PACE_FLUSHES * config.flush_interval_s
        self._idle = asyncio.Event()
        self._idle.set()
        self._received: collections.deque[Message] = collections.deque()
        self._closed: str | None = None
        self._peer_closed: str | None = None
        self.pushes = 0  # actor calls made to send (statistics)
        self.polls = 0  # actor calls made to receive
        self.messages_sent = 0
        self._sender = asyncio.get_running_loop().create_task(
            self._send_loop(), name="distcb-ray-sender"
        )

    @property
    def peer(self) -> str:
        return self._peer

    def statistics(self) -> dict[str, int]:
        """Actor calls made (pushes, polls) and messages sent so far."""
        return {"pushes": self.pushes, "polls": self.polls, "messages_sent": self.messages_sent}

    async def send(self, message: Message) -> None:
        if self._closed is not None:
            raise ConnectionClosed(f"send on a closed connection ({self._closed})")
        self._pending.append(encode(message))
        if not isinstance(message, BatchFrame | Heartbeat):
            self._urgent = True
        self._idle.clear()
        self._wake.set()

    async def receive(self) -> Message:
        while not self._received:
            if self._peer_closed is not None:
                raise ConnectionClosed(f"{self._peer} closed the connection ({self._peer_closed})")
            if self._closed is not None:
                raise ConnectionClosed(self._closed)
            reply = await self._call(
                "poll",
                self._handle.poll.remote(self._conn_id, self._config.heartbeat_interval_s),
                self._config.heartbeat_timeout_s,
            )
            self.polls += 1
            if not isinstance(reply, dict) or not isinstance(reply.get("messages"), list):
                raise ProtocolError(f"{self._peer} answered a poll with {type(reply).__name__}")
            for item in reply["messages"]:
                self._received.append(decode_item(item, self._peer))
            if reply.get("closed"):
                self._peer_closed = str(reply["closed"])
        return self._received.popleft()

    async def close(self, reason: str = "") -> None:
        if self._closed is not None:
            return
        self._closed = reason or "closed by the worker"
        # What was sent before close goes out first, in order.
        if not self._sender.done():
            self._urgent = True
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self._config.reply_timeout_s)
        self._sender.cancel()
        await asyncio.gather(self._sender, return_exceptions=True)
        if self._peer_closed is None:
            with contextlib.suppress(ConnectionClosed):
                await self._call(
                    "close",
                    self._handle.close.remote(self._conn_id, self._closed),
                    self._config.reply_timeout_s,
                )

    async def _send_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_push = -math.inf
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                # Batch logs and heartbeats wait for the pacing interval (more of them
                # then share the call); anything else goes out at once.
                delay = last_push + self._pace_s - loop.time()
                if not self._urgent and delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
                    self._wake.clear()
                    continue
                batch, self._pending, self._urgent = self._pending, [], False
                last_push = loop.time()
                try:
                    closed = await self._call(
                        "push",
                        self._handle.push.remote(self._conn_id, batch),
                        self._config.reply_timeout_s,
                    )
                except ConnectionClosed as exc:
                    self._fail(exc.reason)
                    return
                self.pushes += 1
                self.messages_sent += len(batch)
                if closed:
                    self._peer_closed = str(closed)
                    self._fail(f"{self._peer} closed the connection ({closed})")
                    return
            self._idle.set()

    def _fail(self, reason: str) -> None:
        if self._closed is None:
            self._closed = reason
        self._pending.clear()
        self._idle.set()

    async def _call(self, what: str, ref: Any, timeout_s: float) -> Any:
        """Await one actor call, mapping Ray's errors and the timeout to ConnectionClosed."""
        try:
            return await asyncio.wait_for(ref, timeout_s)
        except TimeoutError:
            raise ConnectionClosed(
                f"{self._peer} did not answer {what} within {timeout_s:g} s"
            ) from None
        except RayError as exc:
            raise ConnectionClosed(_describe_ray_error(f"{what} to {self._peer}", exc)) from None


def _describe_ray_error(what: str, exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{what} failed: {type(exc).__name__}: {first_line}"


async def connect(address: str, token: str, *, config: Config | None = None) -> RayConnection:
    """Open a worker's connection to the coordinator actor named in `address` (``ray:<name>``).

    Retries while the actor is not registered yet, until `Config.connect_timeout_s`.

    Raises:
        ConnectionClosed: the actor could not be found or reached in time.
        ProtocolError: the coordinator rejected the token.
    """
    config = config or Config()
    namespace, name = parse_address(address)
    if not ray.is_initialized():
        raise ConnectionClosed(
            f"cannot reach {address}: this process is not connected to Ray (call ray.init())"
        )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + config.connect_timeout_s
    delay_s = 0.02
    while True:
        try:
            handle = await asyncio.to_thread(ray.get_actor, name, namespace=namespace)
            break
        except ValueError as exc:  # not registered (yet)
            if loop.time() + delay_s > deadline:
                raise ConnectionClosed(
                    f"no coordinator actor {name!r} within Config.connect_timeout_s="
                    f"{config.connect_timeout_s:g} s: {exc}"
                ) from None
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.5)
    peer = f"{socket.gethostname()}:{os.getpid()}"
    remaining = max(0.001, deadline - loop.time())
    try:
        conn_id: Any = await asyncio.wait_for(handle.open.remote(token, peer), remaining)
    except TimeoutError:
        raise ConnectionClosed(
            f"coordinator actor {name!r} did not answer within Config.connect_timeout_s="
            f"{config.connect_timeout_s:g} s"
        ) from None
    except RayError as exc:  # before ProtocolError: Ray's task errors also subclass the cause
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ProtocolError):
            raise ProtocolError(str(cause.args[0] if cause.args else cause)) from None
        raise ConnectionClosed(_describe_ray_error(f"opening {address}", exc)) from None
    return RayConnection(handle, str(conn_id), config, peer=f"coordinator {name}")
