"""What a failure does to a job: a decision, returned, not a flag set.

`FailurePolicy.decide` is asked once for every error the coordinator meets
(a lost or preempted worker, a callback that raised, a bad join, logs that do
not merge) and returns one of:

* `FailJob`: the job ends with this error; the survivors are stopped at a
  common point and `on_train_end` still runs (unless a callback raised: then
  no hook but `on_train_end` runs again).
* `RestartFromBarrier`: with restarts left and an error a restart cures, the
  attempt ends and the next goes on from the newest committed barrier
  (`epoch`; None: from the start); nothing of the epoch in progress is recorded.
* `Wait`: the attempt already has its ending; this error changes nothing (the
  machine goes on waiting for the survivors).

The attempt keeps the decision it acted on (`Attempt.outcome`). `describe`
says what ended a job, for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from distcb.protocol.errors import CallbackFailed, DistcbError, WorkerLostError


class RestartBudget(Protocol):
    """What the policy asks of a resumable job (`distcb.coordinator.resume.Recovery`)."""

    @property
    def committed_epoch(self) -> int | None: ...

    def may_restart(self, error: BaseException) -> bool: ...

    def final_error(self, error: BaseException) -> BaseException: ...


CALLBACK_NOTE = "raised by the coordinator callback"
"""The note added to an exception a coordinator callback raised (before its name)."""


def describe(error: BaseException) -> str:
    """What ended the job, for people: one line where possible (a worker's traceback is
    left out: that worker printed it), naming the coordinator callback that raised."""
    if isinstance(error, WorkerLostError):
        return error.summary
    if isinstance(error, DistcbError):
        return str(error)
    text = f"{type(error).__name__}: {error}"
    notes = [n for n in getattr(error, "__notes__", ()) if str(n).startswith(CALLBACK_NOTE)]
    if notes:  # as CallbackFailed says it, so that every message reads alike
        return f"coordinator callback {notes[-1][len(CALLBACK_NOTE) :].strip()} raised {text}"
    return text


@dataclass(frozen=True)
class FailJob:
    """The job fails with `error` (what `Coordinator.run` raises); `reason` is what the
    workers are told. `callbacks_broken`: a callback raised, no hook runs but on_train_end."""

    error: BaseException
    reason: str
    callbacks_broken: bool

    @property
    def hooks_run(self) -> bool:
        return not self.callbacks_broken


@dataclass(frozen=True)
class RestartFromBarrier:
    """The attempt ends and the job goes on from the barrier of `epoch` (the newest
    committed one when decided; None: from the start). `error` is the failure counted."""

    error: BaseException
    reason: str
    callbacks_broken: bool
    epoch: int | None

    @property
    def hooks_run(self) -> bool:
        return False  # what they would record is rolled back


@dataclass(frozen=True)
class Wait:
    """The attempt already has its ending: nothing changes."""


Outcome = FailJob | RestartFromBarrier
"""How an attempt ends, once decided."""


class FailurePolicy:
    """Decides what an error does to the job, from its kind and the restarts left.

    Args:
        recovery: the job's journal and restart count (None: a failure ends the job).
    """

    def __init__(self, recovery: RestartBudget | None):
        self.recovery = recovery

    def decide(self, error: BaseException, current: Outcome | None) -> Outcome | Wait:
        """What `error` does to an attempt whose ending is `current` (None: none yet)."""
        if current is not None:
            return Wait()
        reason = describe(error)
        recovery = self.recovery
        restart = recovery is not None and recovery.may_restart(error)
        broken = isinstance(error, CallbackFailed)
        if broken and error.__cause__ is not None:
            error = error.__cause__  # the job raises what the callback raised
        if restart:
            assert recovery is not None
            return RestartFromBarrier(
                error,
                f"{reason}; the job goes on from its last committed barrier",
                broken,
                recovery.committed_epoch,
            )
        if recovery is not None:
            error = recovery.final_error(error)
        return FailJob(error, reason, broken)
