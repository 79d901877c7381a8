"""The coordinator as an async Ray actor (the Ray backend's host of a `Coordinator`).

    actor = RayCoordinator.options(name=name).remote(callbacks, world_size=2, token=token)
    outcome = await actor.run.remote()

Workers reach it through `distcb.transport.ray.connect`: over a websocket
straight to the coordinator (the actor serves one on its node's address while
the job runs: `direct_address`), or, where that cannot be reached, through
actor calls (`open`, `push`, `poll`, `close`) answered by a `ChannelHub`.

Actor layout: `push`, `poll` and `run` share the default concurrency group,
whose event loop owns the `Coordinator` (and the websocket server); `open`,
`close`, `direct_address`, `report_lost`, `status`, `observe` and `ping` sit in
the ``control`` group (own slots, own thread) and hop onto the coordinator's
loop, so they never queue behind log ingestion.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import traceback
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any, TypeVar, cast

import ray
from ray import cloudpickle

from distcb.callbacks.history import History
from distcb.coordinator.engine import Coordinator
from distcb.coordinator.listener import JobListener
from distcb.protocol.config import Config
from distcb.protocol.errors import DistcbError
from distcb.transport.ray_channel import ChannelHub

__all__ = ["CONTROL_GROUP", "CoordinatorActor", "RayCoordinator", "callback_state"]

logger = logging.getLogger("distcb.launch.ray")
CONTROL_GROUP = "control"
_T = TypeVar("_T")


class CoordinatorActor:
    """A `Coordinator` inside an async Ray actor; use it through `RayCoordinator`.

    Args:
        callbacks: the coordinator callbacks (pickled into the actor by Ray).
        world_size: the number of workers.
        config: a `Config` as a dict (`Config.to_dict`).
        token: the secret every worker presents when it opens its connection.
        stateful_metrics: metric names taken from the chief rather than averaged.
        observer: optional object that adds one callback after History
            (``observer.callback()``), is attached to the coordinator
            (``observer.attach(coordinator)``, e.g. as a listener) and answers `observe`
            calls with async methods (distcb.tune uses it).
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
        state_dir: str | None = None,
        max_restarts: int = 0,
        resume: bool = False,
    ):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self._loop = asyncio.get_running_loop()  # the default group's loop owns the coordinator
        self._config = Config.from_dict(config) if config else Config()
        self._observer = observer
        chain = list(callbacks)
        self._user_count = len(chain) if user_callbacks is None else user_callbacks
        if observer is not None:
            if not any(isinstance(cb, History) for cb in chain):
                chain.append(History())  # the observer sees the logs as History records them
            chain.append(observer.callback())
        self.coordinator = Coordinator(
            chain,
            world_size=world_size,
            config=self._config,
            stateful_metrics=stateful_metrics,
            state_dir=state_dir,
            max_restarts=max_restarts,
            resume=resume,
        )
        if observer is not None:
            observer.attach(self.coordinator)
        self._hub = ChannelHub(self.coordinator.serve, token, self._config)
        self._token = token
        self._direct: Any = None  # the websocket server workers reach directly
        self._direct_address: str | None = None
        self._direct_ready = asyncio.Event()
        self._direct_task = self._loop.create_task(self._start_direct(), name="distcb-direct")
        self._attempts = _Attempts()
        self.coordinator.add_listener(self._attempts)

    # ---------------------------------------------------------------- data path (default group)

    async def push(self, conn_id: str, items: list[Any]) -> str | None:
        """Deliver a worker's messages in order; returns why the connection is closed, if it is."""
        return self._hub.push(conn_id, items)

    async def poll(self, conn_id: str, wait_s: float) -> dict[str, Any]:
        """Long poll: the coordinator's messages for this connection, after up to `wait_s`."""
        return await self._hub.poll(conn_id, wait_s)

    async def run(self) -> dict[str, Any]:
        """Run the job; returns its outcome as a picklable dict (errors as values)."""
        error: BaseException | None = None
        history = None
        await self._direct_task
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
            await self._hub.aclose()
            if self._direct is not None:
                await self._direct.aclose()
        coordinator = self.coordinator
        history = history or coordinator.history
        return {
            "error": error,
            "history": dict(history.history),
            "epoch": list(history.epoch),
            "worker_reports": dict(getattr(history, "worker_reports", {}) or {}),
            "decisions": [record.to_json() for record in coordinator.decision_log],
            "callback_states": [
                callback_state(cb) for cb in coordinator.callbacks.callbacks[: self._user_count]
            ],
        }

    async def _start_direct(self) -> None:
        """Serve the coordinator over a websocket on this node's address (token required):
        a worker's batch logs then cost it a websocket frame, not an actor call."""
        try:
            # Never less protected than Ray's own calls: with Ray's TLS on, those are
            # encrypted and this channel would not be, so workers use actor calls. With it off,
            # Ray's calls carry the same token in plaintext on the same network, so a plain
            # websocket (insecure=True) exposes nothing more.
            if self._token and not _ray_tls_on():
                from distcb.server import WebSocketServer

                host = ray.util.get_node_ip_address()
                server = WebSocketServer(
                    self.coordinator,
                    host=host,
                    token=self._token,
                    config=self._config,
                    insecure=True,
                )
                await server.start()
                self._direct = server
                self._direct_address = server.address
        except Exception as exc:  # the actor-call channel still works
            logger.warning("no direct websocket channel to the coordinator: %s", exc)
        finally:
            self._direct_ready.set()

    # ---------------------------------------------------------------- control group

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def direct_address(self, token: str, wait_s: float) -> str | None:
        """The ``host:port`` of the coordinator's websocket (None: use actor calls), once
        the job runs (waits up to `wait_s`)."""
        self._hub.check_token(token, "a worker")

        async def address() -> str | None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, float(wait_s))):
                    await self._direct_ready.wait()
            return self._direct_address

        return await self._on_loop(address())

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def open(self, token: str, peer: str) -> str:
        """A worker opens its channel; returns the connection id to push and poll with."""
        self._hub.check_token(token, str(peer))

        async def open_channel() -> str:
            return self._hub.open(str(peer))

        return await self._on_loop(open_channel())

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def close(self, conn_id: str, reason: str = "") -> None:
        """The worker closes its channel (after its last push)."""

        async def close_channel() -> None:
            self._hub.close(conn_id, reason)

        await self._on_loop(close_channel())

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def report_lost(
        self,
        rank: int,
        reason: str,
        traceback_text: str | None = None,
        retryable: bool = True,
        attempt: int | None = None,
    ) -> None:
        """The launcher saw worker `rank` (of `attempt`) die."""

        async def report() -> None:
            if attempt is None or attempt == self.coordinator.attempt:
                self.coordinator.report_lost(rank, reason, traceback_text, retryable=retryable)

        await self._on_loop(report())

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def next_attempt(self, after: int, wait_s: float) -> int | None:
        """The attempt the job is at once it is past `after` (a restart), or None when
        none came within `wait_s`."""

        async def wait() -> int | None:
            return await self._attempts.past(after, wait_s)

        return await self._on_loop(wait())

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def status(self) -> dict[str, Any]:
        async def status() -> dict[str, Any]:
            return self.coordinator.status()

        return await self._on_loop(status())

    @ray.method(concurrency_group=CONTROL_GROUP)
    async def observe(self, method: str, *args: Any) -> Any:
        """Call ``observer.<method>(*args)`` (a coroutine) on the coordinator's loop."""
        if self._observer is None or method.startswith("_"):
            raise ValueError(f"this coordinator has no observer method {method!r}")
        return await self._on_loop(getattr(self._observer, method)(*args))

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


class _Attempts(JobListener):
    """Wakes `next_attempt` callers when the coordinator restarts the job."""

    def __init__(self) -> None:
        self.attempt = 0
        self._changed = asyncio.Event()

    def restarting(self, attempt: int, failure: BaseException) -> None:
        self.attempt = attempt + 1
        self._changed.set()

    async def past(self, after: int, wait_s: float) -> int | None:
        if self.attempt > after:
            return self.attempt
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, wait_s)):
                await self._changed.wait()
        return self.attempt if self.attempt > after else None


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


def _ray_tls_on() -> bool:
    """Whether Ray's own gRPC runs over TLS (``RAY_USE_TLS``, as Ray reads it)."""
    return os.environ.get("RAY_USE_TLS", "0").strip().lower() in ("1", "true")
