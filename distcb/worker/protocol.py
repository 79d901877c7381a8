"""The worker's side of the protocol as a state machine with no I/O (sans-IO).

`WorkerProtocol` knows where a worker is in its job, which coordinator
messages are valid there, what the window rule allows, and which decisions are
due at each point of training. It sends and receives nothing itself: the
session (`distcb.worker.session`) feeds it what arrives and asks it what to do.
It is shared by every kind of worker, the Keras glue and the scripted workers
of `distcb.testing` alike, so a simulated run exercises the same rules.

Phases, and the coordinator messages valid in each (anything else is a
`ProtocolError`; heartbeats are valid everywhere)::

    phase       | start progress epoch_reply train_end_reply abort
    ------------+-----------------------------------------------
    joined      |   x      -         -            -           x
    training    |   -      x         -            a           x
    at_barrier  |   -      x         x            a           x
    ending      |   -      x         x            x           x
    done        |   -      -         -            -           -   (ignored: leaving)

    a: only after an abort (the coordinator gave up waiting for this worker).

A worker in ``ending`` (its fit ended early) still hears the others' progress
and epoch replies and ignores them.

Thread safety: every method takes the protocol's lock, so the training thread
and an IO thread may call it concurrently; `may_begin` reads one tuple and
takes no lock (the hot path of every step).
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

from distcb.protocol.decisions import (
    Decision,
    EffectPoint,
    PendingDecisions,
    may_begin,
)
from distcb.protocol.errors import (
    CoordinatorLostError,
    DistcbError,
    JobFailedError,
    ProtocolError,
)
from distcb.protocol.messages import (
    Abort,
    EpochEnd,
    EpochReply,
    Heartbeat,
    Join,
    JoinParams,
    Message,
    Progress,
    Start,
    TrainEnd,
    TrainEndReply,
)


class WorkerPhase(enum.Enum):
    CONNECTING = "connecting"
    JOINED = "joined"
    TRAINING = "training"
    AT_BARRIER = "at_barrier"
    ENDING = "ending"
    DONE = "done"


ACCEPTS: dict[WorkerPhase, tuple[type[Message], ...]] = {
    WorkerPhase.CONNECTING: (),
    WorkerPhase.JOINED: (Start, Abort),
    WorkerPhase.TRAINING: (Progress, TrainEndReply, Abort),
    WorkerPhase.AT_BARRIER: (Progress, EpochReply, TrainEndReply, Abort),
    WorkerPhase.ENDING: (Progress, EpochReply, TrainEndReply, Abort),
    WorkerPhase.DONE: (),
}
"""The coordinator messages valid in each phase (the table in the module docstring)."""


@dataclass(frozen=True)
class StepBegun:
    """What the worker knew when it began a step (kept when `record_steps` is on)."""

    epoch: int
    step: int
    processed_known: int
    window_steps: int | None


@dataclass(frozen=True)
class DecisionArrival:
    """A decision as it arrived (kept when `record_steps` is on): where the worker was."""

    decision: Decision
    epoch: int
    max_step_begun: int


class WorkerProtocol:
    """One worker's protocol state: phase, window, pending decisions, replies.

    Args:
        rank, world_size: who the worker is.
        record_steps: keep a `StepBegun` for every step begun (for tests of the window rule).
    """

    def __init__(self, rank: int, world_size: int, *, record_steps: bool = False):
        self.rank = rank
        self.world_size = world_size
        self.phase = WorkerPhase.CONNECTING
        self.epoch = 0
        self.window_steps: int | None = None
        self.want_batch_logs = False
        self.abort_reason: str | None = None
        self.restart = False  # the job goes on from its backups: this worker exits to restart
        self.lost: DistcbError | None = None
        self.max_step_begun = -1
        self.steps_begun: list[StepBegun] | None = [] if record_steps else None
        self.arrivals: list[DecisionArrival] | None = [] if record_steps else None
        self._progress = (0, -1)  # (epoch, last processed step) as the coordinator said
        self._pending = PendingDecisions()
        self._start: Start | None = None
        self._epoch_reply: EpochReply | None = None
        self._train_end_reply: TrainEndReply | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ what arrives

    def receive(self, message: Message) -> None:
        """Take in one coordinator message.

        Raises:
            ProtocolError: the message is not valid in this phase (the session then
                closes the connection: a coordinator that breaks the protocol is lost).
        """
        if isinstance(message, Heartbeat):
            return
        with self._lock:
            phase = self.phase
            if phase is WorkerPhase.DONE:
                return
            allowed = ACCEPTS[phase]
            if not isinstance(message, allowed) or (
                isinstance(message, TrainEndReply)
                and phase in (WorkerPhase.TRAINING, WorkerPhase.AT_BARRIER)
                and self.abort_reason is None
            ):
                raise ProtocolError(
                    f"rank {self.rank}: the coordinator sent {message.type!r} while this worker "
                    f"was {phase.value}"
                )
            if self.arrivals is not None:
                for decision in getattr(message, "decisions", ()):
                    self.arrivals.append(DecisionArrival(decision, self.epoch, self.max_step_begun))
            if isinstance(message, Progress):
                self._pending.add(message.decisions)
                if phase is not WorkerPhase.ENDING:
                    self._progress = (message.epoch, message.processed_step)
            elif isinstance(message, EpochReply):
                if phase is WorkerPhase.AT_BARRIER:
                    if message.epoch != self.epoch:
                        raise ProtocolError(
                            f"rank {self.rank}: epoch {message.epoch}'s reply arrived at the "
                            f"barrier of epoch {self.epoch}"
                        )
                    self._epoch_reply = message
            elif isinstance(message, Start):
                self._start = message
            elif isinstance(message, TrainEndReply):
                self._train_end_reply = message
            elif isinstance(message, Abort):
                self.abort_reason = message.reason
                self.restart = self.restart or message.restart
                self._pending.add(message.decisions)

    def lose(self, error: DistcbError) -> None:
        """The coordinator is gone (closed, silent, or broke the protocol)."""
        with self._lock:
            if self.lost is None:
                self.lost = error

    # ------------------------------------------------------------------ join and start

    def join(self, params: JoinParams) -> Join:
        with self._lock:
            self._expect(WorkerPhase.CONNECTING, "join")
            self.phase = WorkerPhase.JOINED
        return Join(rank=self.rank, world_size=self.world_size, params=params)

    def start_ready(self) -> bool:
        return self._start is not None or self._done_waiting() or self.abort_reason is not None

    def take_start(self) -> Start:
        """The go signal (its decisions queued for their effect points).

        Raises:
            JobFailedError: the job failed before it started (the reason says why).
            CoordinatorLostError: the coordinator went away, or restarts the job.
        """
        with self._lock:
            self._raise_if_ended("the go signal")
            if self._start is None and self.abort_reason is not None:
                error = CoordinatorLostError if self.restart else JobFailedError
                raise error(f"the job failed before training started: {self.abort_reason}")
            start = self._start
            assert start is not None, "take_start before start_ready"
            self._expect(WorkerPhase.JOINED, "start")
            self.window_steps = start.ahead_steps  # the bound in force: W, or max_ahead_steps
            self.want_batch_logs = start.want_batch_logs
            self._pending.add(start.decisions)
            self.phase = WorkerPhase.TRAINING
            return start

    # ------------------------------------------------------------------ training

    def begin_epoch(self, epoch: int) -> list[Decision]:
        """Decisions due before `epoch`'s first batch."""
        with self._lock:
            self._raise_if_lost()
            self._expect(WorkerPhase.TRAINING, "an epoch begin")
            self.epoch = epoch
            self.max_step_begun = -1
            return self._pending.take_until(EffectPoint.epoch_begin(epoch))

    def processed_known(self) -> int:
        epoch, processed = self._progress
        return processed if epoch == self.epoch else -1

    def may_begin(self, step: int) -> bool:
        """The window rule for `step` (True too once aborted or lost: nothing to wait for)."""
        if may_begin(step, self.processed_known(), self.window_steps):
            return True
        return self.abort_reason is not None or self.lost is not None

    def begin_batch(self, step: int) -> list[Decision]:
        """Decisions due from `on_train_batch_begin(step)`; the caller checked `may_begin`."""
        if self.lost is not None:
            self._raise_if_lost()
        self.max_step_begun = step
        if self.steps_begun is not None:
            self.steps_begun.append(
                StepBegun(self.epoch, step, self.processed_known(), self.window_steps)
            )
        if not len(self._pending):
            return []
        with self._lock:
            return self._pending.take_until(EffectPoint.batch(self.epoch, step))

    def end_epoch(self, message: EpochEnd) -> EpochEnd:
        with self._lock:
            self._raise_if_lost()
            self._expect(WorkerPhase.TRAINING, "an epoch end")
            self._epoch_reply = None
            self.phase = WorkerPhase.AT_BARRIER
        return message

    def epoch_reply_ready(self) -> bool:
        return self._epoch_reply is not None or self._done_waiting()

    def finish_epoch(self) -> list[Decision]:
        """The barrier's decisions, with every decision due by the epoch's end."""
        with self._lock:
            if self._epoch_reply is None:
                self._raise_if_ended(f"epoch {self.epoch}'s decisions")
            reply = self._epoch_reply
            assert reply is not None
            self._epoch_reply = None
            self._pending.add(reply.decisions)
            self.phase = WorkerPhase.TRAINING
            return self._pending.take_until(EffectPoint.epoch_end(self.epoch))

    def end_training(self) -> TrainEnd:
        with self._lock:
            self._raise_if_lost()
            if self.phase not in (WorkerPhase.TRAINING, WorkerPhase.AT_BARRIER):
                self._expect(WorkerPhase.TRAINING, "the train end")
            self.phase = WorkerPhase.ENDING
        return TrainEnd(rank=self.rank)

    def train_end_ready(self) -> bool:
        return self._train_end_reply is not None or self.lost is not None

    def finish_training(self) -> tuple[list[Decision], str | None]:
        """Every decision left, and the job's error (None when it succeeded)."""
        with self._lock:
            reply = self._train_end_reply
            if reply is None:
                self._raise_if_lost()
                raise AssertionError("finish_training before train_end_ready")
            self.phase = WorkerPhase.DONE
            return self._pending.take_all() + list(reply.decisions), reply.error

    def train_end_decisions(self) -> list[Decision]:
        """What is left to apply when the job ends without a reply (a failure)."""
        with self._lock:
            return self._pending.take_all()

    # ------------------------------------------------------------------ internals

    def _done_waiting(self) -> bool:
        """Whether a waiter must stop waiting: lost, or the job ended under it."""
        return self.lost is not None or self._train_end_reply is not None

    def _raise_if_lost(self) -> None:
        if self.lost is not None:
            if self.abort_reason is not None and not self.restart:
                # The coordinator said the job failed before the connection went (it may
                # simply have exited): that is what happened, and a retry would not help.
                raise JobFailedError(f"the job failed: {self.abort_reason}") from self.lost
            raise self.lost

    def _raise_if_ended(self, what: str) -> None:
        self._raise_if_lost()
        reply = self._train_end_reply
        if reply is not None and reply.error and not self.restart:
            raise JobFailedError(f"the job failed: {reply.error}")
        if reply is not None:
            raise CoordinatorLostError(
                f"rank {self.rank}: the job ended while this worker waited for {what}"
                + (f": {reply.error}" if reply.error else "")
            )

    def _expect(self, phase: WorkerPhase, what: str) -> None:
        if self.phase is not phase:
            raise ProtocolError(
                f"rank {self.rank}: {what} is not valid while the worker is {self.phase.value}"
            )
