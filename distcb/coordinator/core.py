"""The state every role of the coordinator machine shares, and the steps they all use.

The machine (`distcb.coordinator.machine`) is split by role: the epoch barrier
and the batch merge (`barrier`), the train end and failures (`ending`). Each
role is a mixin over `MachineCore`, which holds the job's state (the job-wide
facts, the current `Attempt`) and the steps every role takes: run hooks, log
decisions, apply the failure policy, finish the attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from distcb.callbacks.callback_list import CallbackList
from distcb.callbacks.history import History
from distcb.coordinator.attempt import Attempt, Phase
from distcb.coordinator.batch_merge import BatchMerger
from distcb.coordinator.commands import (
    Asking,
    Broadcast,
    Command,
    Finish,
    HooksRaised,
    RunHooks,
    StartTimer,
    Steps,
)
from distcb.coordinator.events import StopDeadline
from distcb.coordinator.failure_policy import (
    CALLBACK_NOTE,
    CallbackFailed,
    FailurePolicy,
    RestartFromBarrier,
    Wait,
)
from distcb.coordinator.journal import JournalEntry
from distcb.coordinator.model_proxy import DecisionRecord, DecisionRecorder, ModelProxy
from distcb.coordinator.resume import Recovery
from distcb.coordinator.roster import Roster
from distcb.coordinator.runtime import JobState
from distcb.protocol.config import Config
from distcb.protocol.decisions import Decision, EffectPoint, StopTraining, batch_effect_step
from distcb.protocol.log_limit import LogLimiter
from distcb.protocol.logs import Logs
from distcb.protocol.messages import Abort, Saved

logger = logging.getLogger("distcb.coordinator")
_T = TypeVar("_T")


class MachineCore:
    """The job's state and the steps shared by the machine's roles.

    Args:
        world_size: the number of ranks.
        config: limits and timeouts.
        callbacks: the job's callback chain (History included).
        history: the History in it.
        stateful_metrics: metric names taken from the chief rather than averaged.
        recovery: the journal, backups and restarts of a resumable job (None: a failure
            ends the job).
        post: puts an event in the driver's queue for attempt 0 (`next_attempt` takes
            the next attempt's).
    """

    def __init__(
        self,
        *,
        world_size: int,
        config: Config,
        callbacks: CallbackList,
        history: History,
        stateful_metrics: frozenset[str],
        recovery: Recovery | None,
        post: Callable[[Any], None],
    ):
        self.world_size = world_size
        self.config = config
        self.callbacks = callbacks
        self.history = history
        self.stateful_metrics = stateful_metrics
        self.recovery = recovery
        self.policy = FailurePolicy(recovery)
        self.state = JobState(num_workers=world_size)
        self.params: dict[str, Any] = {}
        self.decision_log: list[DecisionRecord] = []
        self.saved_count = 0
        self.recent_saved: list[Saved] = []
        self.last_epoch_logs: Logs = {}
        self.last_batch_logs: Logs = {}
        self.stop_requested: str | None = None  # why (`request_stop`), e.g. "Ctrl-C"
        self.runtime: Any = None  # lent to callbacks (`Runtime`); the driver sets it
        self.awaiting: Command | None = None  # the command whose answer a step waits for
        self._log_limiter = LogLimiter(logger, config.rejection_log_interval_s)
        self.attempt = self._new_attempt(0, None, post)

    def _new_attempt(
        self, number: int, resume_from: JournalEntry | None, post: Callable[[Any], None]
    ) -> Attempt:
        """A fresh attempt: its roster (fed to `post`), merger, model proxy, phase."""
        recorder = DecisionRecorder()
        recorder.current_callback = lambda: self.callbacks.current
        box: list[Attempt] = []
        roster = Roster(
            self.world_size,
            self.config,
            post=post,
            accepting=lambda: box[0].phase is Phase.JOINING,
        )
        attempt = Attempt(
            number=number,
            roster=roster,
            recorder=recorder,
            model=ModelProxy(recorder),
            merger=BatchMerger(0, stateful_metrics=self.stateful_metrics),
            resume_from=resume_from,
        )
        box.append(attempt)
        roster.processed_step = lambda: attempt.merger.processed_step
        roster.waiting_since = self.waiting_since
        return attempt

    def waiting_since(self) -> float | None:
        """When the machine last made progress (`time.monotonic()`), while it waits for
        workers to train or to end; None otherwise (joining, running hooks, after a
        failure, done). The stall watchdog and ``/readyz`` measure from here."""
        a = self.attempt
        if a.phase not in (Phase.TRAINING, Phase.ENDING) or a.failure is not None:
            return None
        return None if isinstance(self.awaiting, RunHooks) else a.last_progress

    # ------------------------------------------------------------------ steps every role takes

    def _ask(self, command: Command) -> Asking[Any]:
        """Yield `command` and return its answer."""
        self.awaiting = command
        try:
            return (yield command)
        finally:
            self.awaiting = None

    def _hooks(self, fn: Callable[[], _T]) -> Asking[_T]:
        """Run `fn` (hook calls) through the driver, off the event loop.

        Raises:
            CallbackFailed: a callback raised (the job then ends with that error).
        """
        answer = yield from self._ask(RunHooks(fn))
        self.attempt.last_progress = time.monotonic()
        if isinstance(answer, HooksRaised):
            exc = answer.error
            culprit = self.callbacks.current
            self.callbacks.current = None
            name = type(culprit).__name__ if culprit is not None else "a callback"
            # The job raises `exc` itself; the note names the callback wherever its
            # traceback is printed (once: by distcb.run's caller, or by the launcher).
            exc.add_note(f"{CALLBACK_NOTE} {name}")
            raise CallbackFailed(
                f"coordinator callback {name} raised {type(exc).__name__}: {exc}"
            ) from exc
        result: _T = answer
        return result

    def _log(self, records: Sequence[DecisionRecord]) -> list[Decision]:
        self.decision_log.extend(records)
        return [record.decision for record in records]

    def _finish(self) -> Steps:
        """The attempt is over (once)."""
        if not self.attempt.finished:
            self.attempt.finished = True
            yield Finish()

    def _fail(self, error: BaseException) -> Steps:
        """Ask the failure policy what `error` does; on a new ending, stop the survivors at
        a common point (the abort) and bound how long the machine waits for them.

        What follows (the barriers rechecked without the lost ranks, the train end once
        every survivor reached it) is `_settle`, after the event that failed."""
        a = self.attempt
        decision = self.policy.decide(error, a.outcome)
        if isinstance(decision, Wait):
            return
        a.outcome = decision
        logger.error("%s", decision.reason)
        restart = isinstance(decision, RestartFromBarrier)
        window = a.recorder.window_steps
        if a.phase is Phase.TRAINING and window is not None:
            at = EffectPoint.batch(a.epoch, batch_effect_step(a.merger.processed_step, window))
        else:
            at = EffectPoint.epoch_end(a.epoch)
        stop = StopTraining(at=at)
        if not restart:
            self.decision_log.append(DecisionRecord(stop, "distcb", time.time()))
        a.model._stop_training = True
        yield Broadcast(Abort(reason=decision.reason[:60000], decisions=(stop,), restart=restart))
        if a.phase is Phase.JOINING:  # nothing started, no callback ran: done
            a.phase = Phase.DONE
            yield from self._finish()
            return
        yield StartTimer(self.config.stop_timeout_s, StopDeadline(a.number))

    def _settle(self) -> Steps:
        """After a rank left or the attempt got its ending: the barriers may be complete
        without the lost ranks, and the train end may be due."""
        raise NotImplementedError  # the machine's (it needs every role)
