"""distcb's exception tree: every public exception lives here (`distcb` exports them all).

    DistcbError
    ├── ProtocolError          a message that is malformed, unexpected or from another version
    ├── AggregationError       worker logs that cannot be merged (a missing key)
    ├── JoinTimeoutError       not every rank joined in time (names the missing ranks)
    ├── WorkerLostError        a worker disconnected, missed heartbeats or raised (names the rank)
    ├── CoordinatorLostError   a worker lost its coordinator
    ├── JobFailedError         the coordinator ended the job as failed (says why: which
    │                          rank, which callback, what)
    ├── CallbackFailed         a coordinator callback raised: the job stops, workers hear why
    ├── DecisionError          a decision that cannot be carried out
    ├── ConnectionClosed       a channel closed or broke (transports raise it; the
    │                          coordinator and workers turn it into the two above)
    ├── IntegrityError         a file of a resumable job's state is damaged, missing or
    │                          a link (names the file)
    ├── JournalMismatchError   the state directory holds the journal of another job
    ├── RendezvousError        ``distcb launch``: a refused node, a wrong token, or no
    │                          coordinator in time
    └── RestartsExhausted      a job lost a worker once more than `max_restarts` allowed

    JobInterrupted (a SystemExit, code 143)  a worker stops so that its job resumes
                               from its backups (a preemption, a restart)
    JobFailed (a SystemExit, code 1)         a worker stops because the job failed
                               elsewhere: retrying will not help

Each survives pickling, so a launcher can carry it across processes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class DistcbError(Exception):
    """Base class of every error distcb raises on purpose."""


class ProtocolError(DistcbError):
    """A message was malformed, unexpected, oversized or of another protocol version.

    `close_code` is the code the connection is closed with (`distcb.protocol.close_codes`):
    a bound of `Config` the peer exceeded has a code of its own.
    """

    def __init__(self, message: str = "", *, close_code: int = 1008):
        super().__init__(message)
        self.close_code = close_code

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, {"close_code": self.close_code}))


class AggregationError(DistcbError):
    """Worker logs could not be merged."""

    def __init__(self, message: str, *, rank: int | None = None, key: str | None = None):
        super().__init__(message)
        self.rank = rank
        self.key = key

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.args, {"rank": self.rank, "key": self.key}))


class JoinTimeoutError(DistcbError, TimeoutError):
    """Not every rank joined before `Config.join_timeout_s`."""

    def __init__(self, missing_ranks: Iterable[int], timeout_s: float, world_size: int):
        self.missing_ranks = sorted(missing_ranks)
        self.timeout_s = timeout_s
        self.world_size = world_size
        super().__init__(
            f"Ranks {self.missing_ranks} of world_size={world_size} did not join within "
            f"{timeout_s:g} s. Check that those workers started and can reach the "
            "coordinator, or raise Config.join_timeout_s."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.missing_ranks, self.timeout_s, self.world_size))


class WorkerLostError(DistcbError):
    """A worker disconnected, stopped sending heartbeats, or raised.

    `retryable` is False when the worker's own code raised (a bug: a restart would
    raise again), True when it went away (killed, evicted, disconnected, silent).
    """

    def __init__(
        self,
        rank: int,
        reason: str,
        traceback_text: str | None = None,
        *,
        retryable: bool = True,
    ):
        self.rank = rank
        self.reason = reason
        self.traceback_text = traceback_text
        self.retryable = retryable
        message = self.summary
        if traceback_text:
            message += f"\n\nTraceback from rank {rank}:\n{traceback_text.rstrip()}"
        super().__init__(message)

    @property
    def summary(self) -> str:
        """One line: the rank and what happened to it (the traceback left out)."""
        return f"rank {self.rank} {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (
                type(self),
                (self.rank, self.reason, self.traceback_text),
                {"retryable": self.retryable},
            ),
        )


class CoordinatorLostError(DistcbError):
    """A worker lost its coordinator (closed connection or missed heartbeats)."""


class JobFailedError(DistcbError):
    """The coordinator ended the job as failed (not a restart): `reason` says why, in one
    line (which rank raised or went away, which callback raised, what was refused)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason,))


class CallbackFailed(DistcbError):
    """A coordinator callback raised: the job stops; workers are told why."""


class DecisionError(DistcbError):
    """A decision could not be carried out."""


class ConnectionClosed(DistcbError):
    """The peer went away or the channel broke; `reason` says how."""

    def __init__(self, reason: str = "connection closed"):
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason,))


class IntegrityError(DistcbError):
    """A file of a resumable job's state (journal, backup) is damaged, missing or a link.

    Attributes:
        path: the file.
        problem: what is wrong with it.
    """

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problem))


class JournalMismatchError(DistcbError):
    """The state directory holds the journal of another job (says what differs)."""


class RendezvousError(DistcbError):
    """The rendezvous of ``distcb launch`` failed: a refused node, a wrong token, or no
    coordinator in time."""


class RestartsExhausted(DistcbError):
    """The job failed once more than `max_restarts` allowed; names every failure.

    Attributes:
        failures: every failure the job went through, the last one last.
    """

    def __init__(self, failures: list[BaseException], max_restarts: int):
        self.failures = list(failures)
        self.max_restarts = max_restarts
        lines = [f"  {i + 1}. {_first_line(f)}" for i, f in enumerate(self.failures)]
        super().__init__(
            f"the job failed {len(self.failures)} times, more than max_restarts={max_restarts} "
            "allows:\n" + "\n".join(lines) + f"\n\nThe last failure:\n{self.failures[-1]}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.failures, self.max_restarts))


class JobInterrupted(SystemExit):
    """A worker stops so that its job resumes from its backups (preempted, or restarting).

    A SystemExit with the "retry me" exit code (143): it passes through the user's
    ``except Exception`` and ends the process with that code, which restart policies
    (distcb's launchers, a Kubernetes pod failure policy) read as "start me again".
    """

    def __init__(self, reason: str):
        super().__init__(143)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason,))


class JobFailed(SystemExit):
    """A worker stops because its job failed elsewhere (another rank raised, a coordinator
    callback raised, the job was refused).

    A SystemExit with the "failed" exit code (1): a restart would fail again. Its cause is
    the `JobFailedError` that says why; the traceback that matters is printed once, by
    whoever raised (the failing rank, or the coordinator for its callbacks).
    """

    def __init__(self, reason: str):
        super().__init__(1)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason,))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _rebuild(cls: type[Exception], args: tuple[Any, ...], attrs: dict[str, Any]) -> Exception:
    error = cls(*args)
    error.__dict__.update(attrs)
    return error
