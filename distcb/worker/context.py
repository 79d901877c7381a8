"""Who a worker is: `WorkerContext`, from the ``DISTCB_*`` environment or from its launcher.

A launcher that runs workers (the process backend's child, a Ray actor, a
thread of the calling process) hands each one a `WorkerHost` through
`hosting(host)`: a context variable, so that workers sharing a process (threads)
each see their own. `WorkerCallback` registers its session with the host, and
the launcher reports a failure of `train_fn` through it. Outside a launcher,
`worker_context()` reads the environment (Kubernetes pods, scripts started by
hand). `WorkerContext.to_env()` writes that environment: the one place it is
built.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from distcb.protocol.config import Config

ENV_ADDRESS = "DISTCB_ADDRESS"
ENV_TOKEN = "DISTCB_TOKEN"
ENV_RANK = "DISTCB_RANK"
ENV_WORLD_SIZE = "DISTCB_WORLD_SIZE"
ENV_CONFIG = "DISTCB_CONFIG"
ENV_RUN_DIR = "DISTCB_RUN_DIR"


@dataclass(frozen=True)
class WorkerContext:
    """This worker's place in the job.

    Attributes:
        rank: 0 .. world_size - 1; rank 0 is the chief.
        world_size: the number of workers.
        address: the coordinator's "host:port" (or "ray:<actor>").
        token: the job's token.
        config: the job's Config.
        run_dir: the job's run directory (where files go), or None.
    """

    rank: int = 0
    world_size: int = 1
    address: str | None = None
    token: str | None = field(default=None, repr=False)
    config: Config = field(default_factory=Config)
    run_dir: str | None = None

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def to_env(self) -> dict[str, str]:
        """The ``DISTCB_*`` variables that make `worker_context()` return this context."""
        env = {
            ENV_RANK: str(self.rank),
            ENV_WORLD_SIZE: str(self.world_size),
            ENV_CONFIG: json.dumps(self.config.to_dict()),
        }
        if self.address:
            env[ENV_ADDRESS] = self.address
        if self.token:
            env[ENV_TOKEN] = self.token
        if self.run_dir:
            env[ENV_RUN_DIR] = self.run_dir
        return env


def tf_config_json(rank: int, addresses: Sequence[str]) -> str:
    """``TF_CONFIG`` for MultiWorkerMirroredStrategy: worker `rank` of the cluster `addresses`."""
    return json.dumps(
        {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": rank}}
    )


class FailureReporter(Protocol):
    """A worker's open session, as a host needs it: it can report a failure."""

    def fail(self, error: BaseException) -> None: ...


class WorkerHost:
    """What a launcher lends the worker it runs: its context, and a way to tell the
    coordinator why `train_fn` raised through the sessions the worker opened."""

    def __init__(self, context: WorkerContext):
        self.context = context
        self._sessions: list[FailureReporter] = []
        self._lock = threading.Lock()

    def register(self, session: FailureReporter) -> None:
        with self._lock:
            self._sessions.append(session)

    def unregister(self, session: FailureReporter) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._sessions.remove(session)

    def report_failure(self, error: BaseException) -> None:
        """Send `error` (with its traceback) through every session still open."""
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            with contextlib.suppress(Exception):  # the original error must still surface
                session.fail(error)


_HOST: contextvars.ContextVar[WorkerHost | None] = contextvars.ContextVar(
    "distcb_worker_host", default=None
)


def current_host() -> WorkerHost | None:
    """The host of the worker running here, when a launcher started it."""
    return _HOST.get()


@contextlib.contextmanager
def hosting(host: WorkerHost) -> Iterator[WorkerHost]:
    """Run the body as the worker `host` describes (launchers wrap `train_fn` in this)."""
    token = _HOST.set(host)
    try:
        yield host
    finally:
        _HOST.reset(token)


def _int_env(
    source: Mapping[str, str], name: str, default: int, fallback: str | None = None
) -> int:
    raw = source.get(name) or (source.get(fallback) if fallback else None)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, found {raw!r}") from None


def context_from_env(env: Mapping[str, str] | None = None) -> WorkerContext:
    """A `WorkerContext` from ``DISTCB_*`` variables (default: this process's environment).

    ``DISTCB_RANK`` falls back to Kubernetes' ``JOB_COMPLETION_INDEX`` (Indexed Jobs).
    """
    source: Mapping[str, str] = os.environ if env is None else env
    rank = _int_env(source, ENV_RANK, 0, "JOB_COMPLETION_INDEX")
    world_size = _int_env(source, ENV_WORLD_SIZE, 1)
    if not 0 <= rank < world_size:
        raise ValueError(f"{ENV_RANK}={rank} is outside {ENV_WORLD_SIZE}={world_size}")
    raw_config = source.get(ENV_CONFIG)
    config = Config.from_dict(json.loads(raw_config)) if raw_config else Config()
    return WorkerContext(
        rank=rank,
        world_size=world_size,
        address=source.get(ENV_ADDRESS),
        token=source.get(ENV_TOKEN),
        config=config,
        run_dir=source.get(ENV_RUN_DIR),
    )


def worker_context() -> WorkerContext:
    """This worker's rank, world size, chief flag and coordinator.

    From its launcher when one started it (`hosting`), else from the environment;
    outside a distcb job: rank 0 of 1.
    """
    host = current_host()
    return host.context if host is not None else context_from_env()
