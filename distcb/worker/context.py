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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from distcb.protocol.config import Config
from distcb.worker import cluster

ENV_ADDRESS = "DISTCB_ADDRESS"
ENV_TOKEN = "DISTCB_TOKEN"
ENV_RANK = "DISTCB_RANK"
ENV_WORLD_SIZE = "DISTCB_WORLD_SIZE"
ENV_CONFIG = "DISTCB_CONFIG"
ENV_RUN_DIR = "DISTCB_RUN_DIR"
ENV_TLS_CA = "DISTCB_TLS_CA"


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
        tls_ca: the CA file (PEM) the coordinator's TLS certificate is verified against;
            set, the worker dials ``wss://``.
    """

    rank: int = 0
    world_size: int = 1
    address: str | None = None
    token: str | None = field(default=None, repr=False)
    config: Config = field(default_factory=Config)
    run_dir: str | None = None
    tls_ca: str | None = None

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
        if self.tls_ca:
            env[ENV_TLS_CA] = self.tls_ca
        return env


class FailureReporter(Protocol):
    """A worker's open session, as a host needs it: it can report a failure, and says
    what the coordinator decided about the job so far."""

    def fail(self, error: BaseException) -> None: ...

    @property
    def verdict(self) -> str | None: ...


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

    def verdict(self) -> str | None:
        """What the coordinator told this worker's open sessions: "restart" (the job goes
        on from its backups: exit to be started again), "failed" (the job ends), or None."""
        with self._lock:
            verdicts = {session.verdict for session in self._sessions}
        if "restart" in verdicts:
            return "restart"
        return "failed" if "failed" in verdicts else None

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


def context_from_env(env: Mapping[str, str] | None = None) -> WorkerContext:
    """A `WorkerContext` from the environment (default: this process's).

    The rank and world size come from ``DISTCB_RANK``/``DISTCB_WORLD_SIZE``, else from
    what the launcher sets: a Kubernetes Indexed Job (``JOB_COMPLETION_INDEX``), a
    JobSet, Open MPI or Slurm (`distcb.worker.cluster`). ``DISTCB_ADDRESS`` goes
    through ``DISTCB_HOST_ALIASES``.

    Raises:
        ValueError: a malformed variable, or a rank outside the world size.
    """
    source: Mapping[str, str] = os.environ if env is None else env
    info = cluster.detect(source)
    raw_config = source.get(ENV_CONFIG)
    config = Config.from_dict(json.loads(raw_config)) if raw_config else Config()
    address = source.get(ENV_ADDRESS)
    if address:
        aliases = cluster.host_aliases(source.get(cluster.ENV_HOST_ALIASES, ""))
        address = cluster.apply_alias(address, aliases)
    return WorkerContext(
        rank=info.rank,
        world_size=info.world_size,
        address=address,
        token=source.get(ENV_TOKEN),
        config=config,
        run_dir=source.get(ENV_RUN_DIR),
        tls_ca=source.get(ENV_TLS_CA) or None,
    )


def worker_context(*, tf_config: str | None = None) -> WorkerContext:
    """This worker's rank, world size, chief flag and coordinator.

    From its launcher when one started it (`hosting`), else from the environment
    (`context_from_env`); outside a distcb job: rank 0 of 1.

    Args:
        tf_config: "auto" sets ``TF_CONFIG`` for MultiWorkerMirroredStrategy from the
            environment (a pod's stable DNS names, ``DISTCB_COLLECTIVE_PORT``; see
            `distcb.worker.cluster`) when it is not set already and the world size is
            above 1. Call it BEFORE ``tf.distribute.MultiWorkerMirroredStrategy()`` is
            created: the strategy reads ``TF_CONFIG`` once, in its constructor. None
            (default) leaves ``TF_CONFIG`` alone.

    Raises:
        ValueError: a malformed variable, a rank outside the world size, an unknown
            `tf_config`, or "auto" where the workers' hosts are unknown.
    """
    if tf_config not in (None, "auto"):
        raise ValueError(f"tf_config must be 'auto' or None, received {tf_config!r}")
    host = current_host()
    context = host.context if host is not None else context_from_env()
    if tf_config == "auto" and context.world_size > 1 and not os.environ.get("TF_CONFIG"):
        os.environ["TF_CONFIG"] = cluster.tf_config(cluster.detect(os.environ))
    return context
