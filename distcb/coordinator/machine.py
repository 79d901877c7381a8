"""The coordinator as a state machine with no I/O (sans-IO), symmetric with the worker's.

`CoordinatorMachine` owns the job's state: the job-wide facts (params, the
decision log, the History) and the current `Attempt` (its roster, phase, batch
merger, epoch barrier and ending). It is fed events, one batch at a time, by a
driver (`handle`): a worker's message as ``(rank, message)``, `WorkerLost`,
`Joined` / `JoinFailed`, the deadlines it set (`StopDeadline`,
`GoodbyeDeadline`). Each call is a generator of `commands`: sends, hook runs,
journal writes, timers, notices for the listeners, `Finish`. Commands that
answer (a hook run's result, a journal write) get the answer back as the value
of the ``yield``. It reads no socket, starts no thread and never awaits: the
async engine (`distcb.coordinator.engine`) drives it in production, and
tests/coordinator/test_machine.py drives it inline, event by event.

Roles, one module each: the epoch barrier and batch merge (`barrier`), the
train end and failures (`ending`); failures are decided by `FailurePolicy`
(fail the job, restart from a barrier, or wait) and kept as the attempt's
`outcome`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from distcb.coordinator import identity
from distcb.coordinator import resume as resuming
from distcb.coordinator.attempt import Attempt, Phase
from distcb.coordinator.batch_merge import BatchMerger
from distcb.coordinator.commands import Broadcast, CheckIdentity, SavedFile, Steps
from distcb.coordinator.ending import EndingRole
from distcb.coordinator.events import (
    GoodbyeDeadline,
    Joined,
    JoinFailed,
    StopDeadline,
    WorkerLost,
)
from distcb.coordinator.failure_policy import CallbackFailed, describe
from distcb.coordinator.journal import JournalEntry
from distcb.coordinator.model_proxy import DecisionRecord
from distcb.coordinator.status import RECENT, JobSnapshot, sink_statistics
from distcb.protocol.decisions import Decision
from distcb.protocol.errors import AggregationError, ProtocolError
from distcb.protocol.messages import (
    BackedUp,
    BatchFrame,
    Done,
    EpochEnd,
    Message,
    Preempted,
    Resume,
    Saved,
    Start,
    TrainEnd,
    WorkerFailed,
)

logger = logging.getLogger("distcb.coordinator")


class CoordinatorMachine(EndingRole):
    """The coordinator's state and rules; see the module docstring and `MachineCore`."""

    # ------------------------------------------------------------------ attempts

    def next_attempt(
        self, resume_from: JournalEntry | None, post: Callable[[Any], None]
    ) -> Attempt:
        """After an attempt that ended in a restart (`Attempt.restarting`): the next one,
        resuming from `resume_from` (the newest committed barrier, None: the start), its
        events fed to `post`. It exists (a roster accepting joins) before the listeners
        hear of the restart: a launcher may start the workers again at once."""
        self.attempt = self._new_attempt(self.attempt.number + 1, resume_from, post)
        return self.attempt

    # ------------------------------------------------------------------ events

    def handle(self, events: Iterable[Any]) -> Steps:
        """Take `events` in, in order. Batch frames are merged together once all of
        `events` are in (many workers: one trip to the callback thread)."""
        a = self.attempt
        frames = False
        for event in events:
            if a.finished:
                return
            if type(event) is tuple and type(event[1]) is BatchFrame:
                rank, frame = event
                if rank in a.roster.live:
                    try:
                        a.merger.add(rank, frame)
                    except AggregationError as exc:
                        yield from self._fail(exc)
                        yield from self._settle()
                    frames = True
                continue
            before = a.outcome
            try:
                yield from self._dispatch(event)
            except AggregationError as exc:
                yield from self._fail(exc)
            if not a.finished and (a.outcome is not before or isinstance(event, WorkerLost)):
                yield from self._settle()
        if frames and not a.finished:
            before = a.outcome
            try:
                yield from self._process_steps(a.merger.pop_ready(a.roster.training()))
            except AggregationError as exc:
                yield from self._fail(exc)
            if not a.finished and a.outcome is not before:
                yield from self._settle()

    def _dispatch(self, event: Any) -> Steps:
        if isinstance(event, tuple):
            rank, message = event
            if rank not in self.attempt.roster.live:
                return  # a worker already counted as lost
            yield from self._HANDLERS[type(message)](self, rank, message)
        elif isinstance(event, WorkerLost):
            yield from self._on_lost(event)
        elif isinstance(event, StopDeadline):
            yield from self._give_up_on_survivors(event)
        elif isinstance(event, GoodbyeDeadline):
            yield from self._goodbye_late(event)
        elif isinstance(event, Joined):
            yield from self._start()
        elif isinstance(event, JoinFailed):
            yield from self._fail(event.error)
        else:
            raise TypeError(f"not an event of the coordinator machine: {event!r}")

    def _on_saved(self, rank: int, message: Saved) -> Steps:
        self.saved_count += 1
        self.recent_saved = [*self.recent_saved[-(RECENT - 1) :], message]
        if message.error:
            self._log_limiter.log(
                logging.WARNING,
                "save_failed",
                "rank %d could not save %s: %s",
                rank,
                message.filepath,
                message.error,
            )
        yield SavedFile(message)

    _HANDLERS: dict[type[Message], Callable[[CoordinatorMachine, int, Any], Steps]] = {
        EpochEnd: EndingRole._on_epoch_end,
        TrainEnd: EndingRole._on_train_end,
        Done: EndingRole._on_done,
        Saved: _on_saved,
        BackedUp: EndingRole._on_backed_up,
        Preempted: EndingRole._on_preempted,
        WorkerFailed: EndingRole._on_worker_failed,
    }

    # ------------------------------------------------------------------ the start

    def _start(self) -> Steps:
        """Every rank joined: attach the callbacks, run `on_train_begin` (and the first
        `on_epoch_begin`), and send the go signal."""
        a = self.attempt
        roster, recovery, entry = a.roster, self.recovery, a.resume_from
        try:
            self.params = roster.merged_params()
        except ProtocolError as exc:
            yield from self._fail(exc)
            return
        a.recorder.window_steps = (
            self.config.window_steps if self.callbacks.decides_on_batch else None
        )
        want_batch_logs = self.callbacks.has_batch_hooks
        # Workers respect one bound on how far they run ahead of the processed step:
        # the window of the window rule when a callback decides on batches, else the
        # wider flow-control bound (the coordinator buffers no more than that).
        ahead_steps = a.recorder.window_steps or (
            self.config.max_ahead_steps if want_batch_logs else None
        )
        roster.flow_window = ahead_steps
        if recovery is not None and a.number == 0:
            # The workers' part of the job's identity (a restart is the same job).
            workers = {rank: w.params for rank, w in roster.workers.items()}
            refused = yield from self._ask(CheckIdentity(identity.describe_workers(workers)))
            if refused is not None:
                yield from self._fail(refused)
                return
        a.model.optimizer._sync(roster.workers[0].params.learning_rate)
        self.callbacks.attach(self.params, a.model, self.runtime)
        first = int(self.params.get("initial_epoch") or 0)  # a resumed fit counts from there
        resume: Resume | None = None
        pending: list[Decision] = []
        if entry is not None:
            first = entry.epoch + 1
            resume = Resume(
                epoch=entry.epoch, snapshots=tuple(entry.snapshots), stopping=entry.stopping
            )
            pending = list(entry.pending)
            yield from self._apply_entry(entry)
        elif recovery is not None and recovery.initial_states is not None:
            # A restart before the first committed barrier: back to how the job began.
            yield from self._restore(recovery.initial_states, global_step=0, log=[])
        # What such a restart rolls back to: the states right after the first
        # on_train_begin (a sink has then counted what its file held before the job).
        capture_initial = entry is None and recovery is not None and recovery.initial_states is None
        a.phase = Phase.TRAINING
        a.last_progress = time.monotonic()  # the stall watchdog counts from the start
        roster.begin_training()
        a.epoch = first
        roster.begin_epoch(first)
        a.merger = BatchMerger(first, stateful_metrics=self.stateful_metrics)
        recorder, callbacks, model = a.recorder, self.callbacks, a.model

        def begin() -> list[DecisionRecord]:
            recorder.set_context("train_begin", first)
            callbacks.on_train_begin()
            if capture_initial:
                assert recovery is not None
                recovery.remember_initial(resuming.callback_states(callbacks.callbacks))
            # A resumed job made the next epoch's on_epoch_begin decisions before it was
            # interrupted: they come from the journal (`pending`), not from a second call.
            if entry is None and not model.stop_training:
                callbacks.on_epoch_begin(first)
            return recorder.take()

        try:
            decisions = pending + self._log((yield from self._hooks(begin)))
        except CallbackFailed as exc:
            yield from self._fail(exc)
            return
        start = Start(
            decisions=tuple(decisions),  # type: ignore[arg-type]
            ahead_steps=ahead_steps,
            want_batch_logs=want_batch_logs,
            worker_requests=self.callbacks.worker_requests,
            persist_snapshots=recovery is not None,
            resume=resume,
        )
        if entry is not None and entry.stopping:
            a.phase = Phase.ENDING  # it had decided to stop: only the train end is left
        yield Broadcast(start)

    def _apply_entry(self, entry: JournalEntry) -> Steps:
        """Set this attempt back to the barrier of `entry` (callbacks attached)."""
        resuming.apply_to_recorder(entry, self.attempt.recorder)
        self.attempt.model.optimizer._sync(entry.learning_rate)
        yield from self._restore(
            entry.callbacks,
            global_step=entry.global_step,
            log=resuming.records_from_json(entry.decisions),
        )

    def _restore(
        self,
        states: Sequence[dict[str, Any] | None],
        *,
        global_step: int,
        log: list[DecisionRecord],
    ) -> Steps:
        self.decision_log = log
        self.state.global_step = global_step
        self.history.worker_reports = {}
        callbacks = self.callbacks.callbacks
        yield from self._hooks(lambda: resuming.restore_callbacks(callbacks, states))

    # ------------------------------------------------------------------ views

    def result(self) -> Any:
        """The job's History, once the attempt finished without an outcome."""
        a = self.attempt
        self.history.worker_reports = {
            r: w.report for r, w in sorted(a.roster.workers.items()) if w.report is not None
        }
        self.history.decisions = [record.to_json() for record in self.decision_log]
        return self.history

    def snapshot(self) -> JobSnapshot:
        """The job as it stands, for ``/status`` and status pages (`status.job_status`)."""
        a = self.attempt
        recovery = self.recovery
        history = self.history
        callbacks = self.callbacks.callbacks
        failure = a.failure
        return JobSnapshot(
            phase=a.phase.value,
            world_size=self.world_size,
            attempt=a.number,
            failures=tuple(describe(f) for f in (recovery.failures if recovery else [])),
            epoch=a.epoch,
            epochs=self.params.get("epochs"),
            history={k: list(v[-500:]) for k, v in history.history.items()},
            history_epochs=list(history.epoch[-500:]),
            batches_streamed=bool(self.callbacks.has_batch_hooks),
            processed_step=a.merger.processed_step,
            global_step=self.state.global_step,
            workers=tuple(a.roster.status()),
            joined=tuple(sorted(a.roster.workers)),
            live=tuple(sorted(a.roster.live)),
            last_epoch_logs=dict(self.last_epoch_logs),
            last_batch_logs=dict(self.last_batch_logs),
            epoch_spread=dict(self.state.epoch_spread),
            batch_spread=dict(self.state.batch_spread),
            monitored=tuple(sorted({str(c.monitor) for c in callbacks if hasattr(c, "monitor")})),
            decisions=tuple(r.to_json() for r in self.decision_log[-RECENT:]),
            decision_count=len(self.decision_log),
            saved_count=self.saved_count,
            committed_epoch=recovery.committed_epoch if recovery is not None else None,
            sinks=sink_statistics(callbacks),
            failure=describe(failure) if failure is not None else None,
        )
