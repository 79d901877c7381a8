"""The coordinator: one engine per job, fed by worker connections.

The roster turns every connection's messages into events in one queue,
consumed by one engine task, the sole owner of the job's state: state changes
happen one at a time, in arrival order. Callback hooks run on a dedicated
thread (user code may block; the event loop must not). The phases of one
attempt::

    JOINING -> TRAINING -> ENDING -> DONE
         \\________\\_________\\-> (failure: the error is kept, survivors are stopped at a
                                  common point, on_train_end still runs)

One epoch barrier, in order (`_finish_epoch`): merge the workers' epoch logs,
run the deciding callbacks (`on_epoch_end`, then the next `on_epoch_begin`) in
one trip to the callback thread, release every worker with the decisions,
tell the listeners, run the observers (sinks, History), and journal.

With a state directory the job is resumable (DESIGN principle 9): the journal
records every barrier, the workers back up at each, and a worker lost (or
preempted) while restarts are left ends the attempt: the survivors stop and
exit with the "retry me" code, the callbacks roll back to the newest
committed barrier, and a new attempt waits for every rank to join again and
restore its backup of that barrier.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from distcb.callbacks.callback_list import CallbackList, DeferredCall
from distcb.callbacks.history import History
from distcb.coordinator import identity
from distcb.coordinator import resume as resuming
from distcb.coordinator.aggregate import BatchMerger, MergedStep, merge_logs
from distcb.coordinator.journal import JournalEntry, JournalMismatchError
from distcb.coordinator.listener import Listener
from distcb.coordinator.model_proxy import DecisionRecord, DecisionRecorder, ModelProxy
from distcb.coordinator.roster import Roster, WorkerLost
from distcb.coordinator.runtime import JobState, Runtime
from distcb.coordinator.status import CALLBACK_NOTE, RECENT, describe, job_status
from distcb.protocol.config import Config
from distcb.protocol.decisions import BackupModel, Decision, EffectPoint, StopTraining
from distcb.protocol.errors import (
    AggregationError,
    DistcbError,
    JoinTimeoutError,
    ProtocolError,
    WorkerLostError,
)
from distcb.protocol.integrity import IntegrityError
from distcb.protocol.log_limit import LogLimiter
from distcb.protocol.logs import Logs
from distcb.protocol.messages import (
    Abort,
    BackedUp,
    BatchFrame,
    Done,
    EpochEnd,
    EpochReply,
    Message,
    Preempted,
    Progress,
    Resume,
    Saved,
    Start,
    TrainEnd,
    TrainEndReply,
    WorkerFailed,
)
from distcb.transport.base import Connection

logger = logging.getLogger("distcb.coordinator")
_T = TypeVar("_T")


class Phase(enum.Enum):
    JOINING = "joining"
    TRAINING = "training"
    ENDING = "ending"
    DONE = "done"


class CallbackFailed(DistcbError):
    """A coordinator callback raised: the job stops; workers are told why."""


class _Deadline:
    """Event: the stop timeout after a failure ran out."""


class _Restart(Exception):
    """Ends an attempt that a restart follows."""


class Coordinator:
    """Runs the callback chain once for `world_size` workers and sends them its decisions.

    Args:
        callbacks: Keras-style callbacks (distcb's or unmodified keras.callbacks.Callback
            subclasses). A `History` is appended, as Keras does.
        world_size: the number of workers (ranks 0 .. world_size - 1); rank 0 is the chief.
        config: limits and timeouts.
        stateful_metrics: metric names taken from the chief rather than averaged.
        state_dir: where the journal goes; workers back up at every barrier (every
            `Config.backup_every_epochs`) so that the job can go on after a failure.
        max_restarts: how many times a lost (or preempted) worker may restart the job from
            its last committed barrier (needs `state_dir`).
        resume: go on from the journal in `state_dir` if it has a committed barrier (a
            coordinator that died); without one, start afresh.

    Use: hand each worker connection to `serve` (a transport does this) and
    await `run`, which returns the aggregated History or raises the job's error.
    """

    def __init__(
        self,
        callbacks: Iterable[Any] = (),
        *,
        world_size: int,
        config: Config | None = None,
        stateful_metrics: Iterable[str] = (),
        state_dir: str | None = None,
        max_restarts: int = 0,
        resume: bool = False,
    ):
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be an int >= 1, received {world_size!r}")
        if config is not None and not isinstance(config, Config):
            raise TypeError(f"config must be a distcb.Config, received {type(config).__name__}")
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, received {max_restarts!r}")
        if (max_restarts or resume) and not state_dir:
            raise ValueError(
                "max_restarts and resume need a state directory for the journal and the "
                "backups: pass state_dir (distcb.run: run_dir)"
            )
        self.world_size = world_size
        self.config = config or Config()
        self.stateful_metrics = frozenset(stateful_metrics)
        user_callbacks = list(callbacks)
        histories = [cb for cb in user_callbacks if isinstance(cb, History)]
        self.history = histories[0] if histories else History()
        self.callbacks = CallbackList(user_callbacks + ([] if histories else [self.history]))
        # A resumable job's journal, backups and restarts (None: a failure ends the job).
        self.recovery = (
            resuming.Recovery(
                state_dir,
                world_size=world_size,
                callbacks=self.callbacks.callbacks,
                max_restarts=max_restarts,
                resume=resume,
                backup_every_epochs=self.config.backup_every_epochs,
            )
            if state_dir
            else None
        )
        self.state = JobState(num_workers=world_size)
        self.params: dict[str, Any] = {}
        self.decision_log: list[DecisionRecord] = []
        self.saved_count = 0
        self.recent_saved: list[Saved] = []
        self.last_epoch_logs: Logs = {}
        self.last_batch_logs: Logs = {}
        self._listeners: list[Listener] = []
        self._log_limiter = LogLimiter(logger, self.config.rejection_log_interval_s)
        self._callback_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="distcb-callbacks"
        )
        self._runtime: Runtime | None = None
        self.stop_requested: str | None = None  # why (`request_stop`), e.g. "Ctrl-C"
        self._new_attempt()

    def _new_attempt(self) -> None:
        """The state of one attempt: a fresh roster, merger, model proxy and phase."""
        self.phase = Phase.JOINING
        self.failure: BaseException | None = None
        self.epoch = 0
        self.recorder = DecisionRecorder()
        self.recorder.current_callback = lambda: self.callbacks.current
        self.model = ModelProxy(self.recorder)
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self.roster = Roster(
            self.world_size,
            self.config,
            post=self._events.put_nowait,
            accepting=lambda: self.phase is Phase.JOINING,
        )
        self.roster.processed_step = lambda: self._merger.processed_step
        self.roster.waiting_since = self.waiting_since
        self.last_progress = time.monotonic()  # a merged step, an epoch end, a callback return
        self._in_callback = False
        self._merger = BatchMerger(0, stateful_metrics=self.stateful_metrics)
        self._epoch_ends: dict[int, EpochEnd] = {}
        self._progress_sent = -1  # the last processed step told to the workers this epoch
        self._merge_pending = False  # frames added, their merge deferred (`_on_batches`)
        self._finished = asyncio.Event()
        self._callbacks_broken = False  # a callback raised: no hook runs but on_train_end
        self._restarting: BaseException | None = None  # this attempt ends in a restart

    # ------------------------------------------------------------------ the public surface

    @property
    def decisions(self) -> list[Decision]:
        """Every decision made so far, in the order the callbacks made them."""
        return [record.decision for record in self.decision_log]

    @property
    def attempt(self) -> int:
        """0 for the first attempt, then one more after each restart."""
        return self.recovery.attempt if self.recovery is not None else 0

    @property
    def failures(self) -> list[BaseException]:
        """The failures that restarted the job so far."""
        return self.recovery.failures if self.recovery is not None else []

    @property
    def committed_epoch(self) -> int | None:
        """The newest epoch the job can go on from after a failure."""
        return self.recovery.committed_epoch if self.recovery is not None else None

    @property
    def processed_step(self) -> int:
        return self._merger.processed_step

    async def serve(self, connection: Connection) -> None:
        """Handle one worker connection until it closes (a transport calls this)."""
        await self.roster.serve(connection)

    def report_lost(
        self,
        rank: int,
        reason: str,
        traceback_text: str | None = None,
        *,
        retryable: bool = True,
        attempt: int | None = None,
    ) -> None:
        """A launcher saw worker `rank` die (exit code, dead actor). Call on the event loop.

        `attempt` is the attempt the launcher started that process for: a report about an
        attempt that has ended (a survivor exiting "retry me" as told, seen only once the
        restart began) is no failure of the next one, and is dropped."""
        if attempt is not None and attempt != self.attempt:
            return
        self.roster.report_lost(rank, reason, traceback_text, retryable=retryable)

    async def report_exit(
        self,
        rank: int,
        reason: str,
        traceback_text: str | None = None,
        *,
        retryable: bool = True,
        attempt: int | None = None,
    ) -> None:
        """A launcher saw worker `rank`'s process end: once what it sent before it ended
        has been read (bounded by `Config.reply_timeout_s`), it is lost unless it said
        goodbye. A clean exit right after its last message is therefore no failure.
        `attempt`: as for `report_lost`."""
        if attempt is not None and attempt != self.attempt:
            return
        roster = self.roster
        await roster.wait_disconnected(rank, self.config.reply_timeout_s)
        if rank not in roster.workers:  # it never joined, yet ended without an error
            reason += (
                "; it never joined the job: did its script add "
                "distcb.keras.WorkerCallback() to model.fit?"
            )
        if roster is self.roster:  # not a report about an attempt that has ended
            roster.report_lost(rank, reason, traceback_text, retryable=retryable)

    def request_stop(self, reason: str) -> bool:
        """Stop the job at its next epoch end, as a callback setting ``model.stop_training``
        would (a Ctrl-C): `on_train_end` runs and `run` returns the History. Call on the event
        loop. Returns False when no epoch end is coming (the job has not started training):
        the caller then stops the job itself."""
        if self.stop_requested is None:
            self.stop_requested = reason
        return self.phase is not Phase.JOINING

    def add_listener(self, listener: Listener) -> None:
        """Be told of released epochs, saves, restarts and the job's end (`JobListener`)."""
        self._listeners.append(listener)

    @property
    def accepting_joins(self) -> bool:
        return self.phase is Phase.JOINING

    def status(self) -> dict[str, Any]:
        """A picture of the job for ``/status`` and status pages."""
        return job_status(self)

    def waiting_since(self) -> float | None:
        """When the coordinator last made progress (`time.monotonic()`), while it waits for
        workers to train or to end; None otherwise (joining, in a callback, after a failure,
        done). The stall watchdog and ``/readyz`` measure from here."""
        if self.phase not in (Phase.TRAINING, Phase.ENDING) or self.failure is not None:
            return None
        return None if self._in_callback else self.last_progress

    # ------------------------------------------------------------------ the engine

    async def run(self) -> History:
        """Run the job to its end; returns the aggregated History.

        Raises:
            JoinTimeoutError: not every rank joined in time.
            WorkerLostError: a worker disconnected, went silent or raised.
            RestartsExhausted: with restarts, the job failed once more than allowed.
            AggregationError: worker logs could not be merged.
            ProtocolError: the workers' join parameters disagree.
            JournalMismatchError: the state directory holds another job's journal.
            Exception: what a coordinator callback raised.
        """
        loop = asyncio.get_running_loop()
        self._runtime = Runtime(loop, self.config, self.state)
        failure: BaseException | None = None
        try:
            entry = await self.recovery.open() if self.recovery is not None else None
            while True:
                try:
                    return await self._run_attempt(entry)
                except _Restart:
                    entry = await self._roll_back()
        except BaseException as exc:
            failure = exc
            raise
        finally:
            await self._runtime.aclose()
            self._callback_thread.shutdown(wait=False)
            if self.recovery is not None:
                self.recovery.close()
            for listener in self._listeners:
                with contextlib.suppress(Exception):
                    listener.ended(failure)

    async def _run_attempt(self, entry: JournalEntry | None) -> History:
        loop = asyncio.get_running_loop()
        watchdog = loop.create_task(self.roster.watch_heartbeats(), name="distcb-heartbeats")
        try:
            await self._join()
            if self.failure is None and self._restarting is None:  # every rank joined
                await self._start(entry)
            while not self._finished.is_set():
                event = await self._events.get()
                self.roster.taken(event)
                try:
                    await self._handle(event)
                except AggregationError as exc:
                    await self._fail(exc)
            if self._restarting is not None:
                raise _Restart()
            if self.failure is not None:
                raise self.failure
            self.history.worker_reports = {
                r: w.report for r, w in sorted(self.roster.workers.items()) if w.report is not None
            }
            self.history.decisions = [record.to_json() for record in self.decision_log]
            return self.history
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            await self.roster.close_all()

    async def _roll_back(self) -> JournalEntry | None:
        """After an attempt that ends in a restart: the entry the next attempt resumes from.

        The next attempt's state (a roster accepting joins) exists before the listeners
        hear of the restart: a launcher may start the workers again at once.
        """
        failure = self._restarting
        assert failure is not None
        assert self.recovery is not None
        attempt = self.recovery.attempt
        entry = await self.recovery.next_attempt(failure)
        self._new_attempt()
        for listener in self._listeners:
            listener.restarting(attempt, failure)
        return entry

    async def _join(self) -> None:
        try:
            async with asyncio.timeout(self.config.join_timeout_s):
                await self.roster.all_joined.wait()
        except TimeoutError:
            missing = self.roster.missing()
            error: DistcbError = JoinTimeoutError(
                missing, self.config.join_timeout_s, self.world_size
            )
        else:
            if not self.roster.never_joined:
                return
            error = self.roster.never_joined[min(self.roster.never_joined)]
        await self._fail(error)

    async def _handle(self, event: Any) -> None:
        await self._dispatch(event)
        if self._merge_pending and not self._events.qsize():
            self._merge_pending = False
            await self._process_steps(self._merger.pop_ready(self.roster.training()))

    async def _dispatch(self, event: Any) -> None:
        if isinstance(event, WorkerLost):
            await self._on_lost(event.rank, event.error)
            return
        if isinstance(event, _Deadline):
            await self._give_up_on_survivors()
            return
        rank, message = event
        if rank not in self.roster.live:
            return  # a worker already counted as lost
        handler = self._HANDLERS[type(message)]
        await handler(self, rank, message)

    async def _in_callbacks(self, fn: Callable[[], _T]) -> _T:
        """Run `fn` (hook calls) on the callback thread.

        Raises:
            CallbackFailed: a callback raised (the job then ends with that error).
        """
        loop = asyncio.get_running_loop()
        self._in_callback = True
        try:
            return await loop.run_in_executor(self._callback_thread, fn)
        except Exception as exc:
            culprit = self.callbacks.current
            self.callbacks.current = None
            name = type(culprit).__name__ if culprit is not None else "a callback"
            # The job raises `exc` itself; the note names the callback wherever its
            # traceback is printed (once: by distcb.run's caller, or by the launcher).
            exc.add_note(f"{CALLBACK_NOTE} {name}")
            raise CallbackFailed(
                f"coordinator callback {name} raised {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            self._in_callback = False
            self.last_progress = time.monotonic()

    def _log(self, records: Sequence[DecisionRecord]) -> list[Decision]:
        self.decision_log.extend(records)
        return [record.decision for record in records]

    @property
    def _hooks_run(self) -> bool:
        """Whether callback hooks still run: not on a broken chain, nor in an attempt that
        ends in a restart (what it would record is rolled back)."""
        return not self._callbacks_broken and self._restarting is None

    # ------------------------------------------------------------------ phases

    async def _start(self, entry: JournalEntry | None) -> None:
        try:
            self.params = self.roster.merged_params()
        except ProtocolError as exc:
            await self._fail(exc)
            return
        self.recorder.window_steps = (
            self.config.window_steps if self.callbacks.decides_on_batch else None
        )
        want_batch_logs = self.callbacks.has_batch_hooks
        # Workers respect one bound on how far they run ahead of the processed step:
        # the window of the window rule when a callback decides on batches, else the
        # wider flow-control bound (the coordinator buffers no more than that).
        flow_window = self.recorder.window_steps or (
            self.config.max_ahead_steps if want_batch_logs else None
        )
        self.roster.flow_window = flow_window
        recovery = self.recovery
        if recovery is not None and recovery.attempt == 0:
            # The workers' part of the job's identity (a restart is the same job).
            workers = {rank: w.params for rank, w in self.roster.workers.items()}
            try:
                await asyncio.to_thread(
                    identity.check_workers, recovery.journal, identity.describe_workers(workers)
                )
            except (JournalMismatchError, IntegrityError) as exc:
                await self._fail(exc)
                return
        self.model.optimizer._sync(self.roster.workers[0].params.learning_rate)
        self.callbacks.attach(self.params, self.model, self._runtime)
        first = int(self.params.get("initial_epoch") or 0)  # a resumed fit counts from there
        resume: Resume | None = None
        pending: list[Decision] = []
        if entry is not None:
            first = entry.epoch + 1
            resume = Resume(
                epoch=entry.epoch, snapshots=tuple(entry.snapshots), stopping=entry.stopping
            )
            pending = list(entry.pending)
            await self._apply_entry(entry)
        elif recovery is not None and recovery.initial_states is not None:
            # A restart before the first committed barrier: back to how the job began.
            await self._apply_initial_states(recovery.initial_states)
        # What such a restart rolls back to: the states right after the first
        # on_train_begin (a sink has then counted what its file held before the job).
        capture_initial = entry is None and recovery is not None and recovery.initial_states is None
        self.phase = Phase.TRAINING
        self.last_progress = time.monotonic()  # the stall watchdog counts from the start
        self.roster.begin_training()
        self.epoch = first
        self.roster.begin_epoch(first)
        self._merger = BatchMerger(first, stateful_metrics=self.stateful_metrics)

        def begin() -> list[DecisionRecord]:
            self.recorder.set_context("train_begin", first)
            self.callbacks.on_train_begin()
            if capture_initial:
                assert recovery is not None
                recovery.remember_initial(resuming.callback_states(self.callbacks.callbacks))
            # A resumed job made the next epoch's on_epoch_begin decisions before it was
            # interrupted: they come from the journal (`pending`), not from a second call.
            if entry is None and not self.model.stop_training:
                self.callbacks.on_epoch_begin(first)
            return self.recorder.take()

        try:
            decisions = pending + self._log(await self._in_callbacks(begin))
        except CallbackFailed as exc:
            await self._fail(exc)
            return
        start = Start(
            decisions=tuple(decisions),  # type: ignore[arg-type]
            window_steps=flow_window,
            want_batch_logs=want_batch_logs,
            histogram_freq=self.callbacks.histogram_freq,
            want_model_json=self.callbacks.wants_model_json,
            persist_snapshots=recovery is not None,
            resume=resume,
            **self.callbacks.chief_tensorboard_requests,
        )
        if entry is not None and entry.stopping:
            self.phase = Phase.ENDING  # it had decided to stop: only the train end is left
        await self.roster.broadcast(start)

    async def _apply_entry(self, entry: JournalEntry) -> None:
        """Set this attempt back to the barrier of `entry` (callbacks attached)."""
        resuming.apply_to_recorder(entry, self.recorder)
        self.decision_log = resuming.records_from_json(entry.decisions)
        self.state.global_step = entry.global_step
        self.model.optimizer._sync(entry.learning_rate)
        self.history.worker_reports = {}
        await self._in_callbacks(
            lambda: resuming.restore_callbacks(self.callbacks.callbacks, entry.callbacks)
        )

    async def _apply_initial_states(self, states: list[dict[str, Any] | None] | None) -> None:
        assert states is not None
        self.decision_log = []
        self.state.global_step = 0
        self.history.worker_reports = {}
        await self._in_callbacks(
            lambda: resuming.restore_callbacks(self.callbacks.callbacks, states)
        )

    async def _on_batches(self, rank: int, frame: BatchFrame) -> None:
        self._merger.add(rank, frame)
        if self._events.qsize():
            # More arrived meanwhile (many workers): merge them together, one trip to the
            # callback thread; `_handle` merges once the queue is drained.
            self._merge_pending = True
            return
        await self._process_steps(self._merger.pop_ready(self.roster.training()))

    async def _process_steps(self, steps: Sequence[MergedStep]) -> None:
        if not steps or self.phase is not Phase.TRAINING:
            return
        self.last_progress = time.monotonic()
        epoch = self.epoch
        self.last_batch_logs = dict(steps[-1].logs)
        decisions: list[Decision] = []
        if self.callbacks.has_batch_hooks and self._hooks_run:

            def run_all() -> list[DecisionRecord]:
                # One trip to the callback thread for all ready steps, but each step is
                # its own hook chain so that each decision gets its own effect step.
                made: list[DecisionRecord] = []
                for merged in steps:
                    self.state.global_step += 1
                    self.state.set_batch_step(merged)
                    self.recorder.set_context("batch", epoch, merged.step)
                    self.callbacks.on_train_batch_begin(merged.step)
                    self.callbacks.on_train_batch_end(merged.step, dict(merged.logs))
                    made += self.recorder.take()
                return made

            try:
                decisions = self._log(await self._in_callbacks(run_all))
            except CallbackFailed as exc:
                await self._fail(exc)  # survivors still hear the progress below
        else:
            self.state.global_step += len(steps)
            self.state.set_batch_step(steps[-1])
        last = steps[-1].step
        window = self.roster.flow_window
        # Workers need the processed step only to stay within the window; they send a
        # frame every W/4 steps, and hearing back every W/2 keeps them off the edge.
        if decisions or (window is not None and last - self._progress_sent >= max(1, window // 2)):
            self._progress_sent = last
            await self.roster.broadcast(Progress(epoch, last, tuple(decisions)))  # type: ignore[arg-type]

    async def _on_epoch_end(self, rank: int, message: EpochEnd) -> None:
        self._epoch_ends[rank] = message
        await self._maybe_finish_epoch()

    async def _maybe_finish_epoch(self) -> None:
        training = self.roster.training()
        if self.phase is not Phase.TRAINING or not training:
            return
        if all(r in self._epoch_ends for r in training):
            await self._finish_epoch(training)

    async def _finish_epoch(self, training: set[int]) -> None:
        epoch = self.epoch
        self.last_progress = time.monotonic()
        await self._process_steps(self._merger.flush(training))
        if not self._hooks_run:
            # The failure's stop takes effect here; nothing of this epoch is recorded.
            self._epoch_ends = {}
            self.phase = Phase.ENDING
            self.roster.begin_epoch(epoch)  # before the reply: a worker answers at once
            await self.roster.broadcast(EpochReply(epoch, ()))
            return
        logs = self._merge_epoch({r: self._epoch_ends[r] for r in training})
        self._epoch_ends = {}
        planned_last = epoch + 1 >= int(self.params.get("epochs") or 1)
        deferred: list[DeferredCall] = []

        def decide() -> tuple[list[DecisionRecord], bool]:
            self.recorder.set_context("epoch_end", epoch)
            self.callbacks.on_epoch_end_deferring(epoch, logs, deferred)
            if self.stop_requested is not None and not self.model.stop_training:
                self.model.stop_training = True  # recorded as distcb's decision
            made = self.recorder.take()
            stopping = self.model.stop_training or planned_last or self.failure is not None
            if not stopping:
                self.recorder.set_context("epoch_begin", epoch + 1)
                self.callbacks.on_epoch_begin_deferring(epoch + 1, deferred)
                made += self.recorder.take()
            return made, stopping

        try:
            records, stopping = await self._in_callbacks(decide)
        except CallbackFailed as exc:
            await self._fail(exc)
            await self._finish_epoch(training)  # the failure's stop, released at once
            return
        backup = self._backup_decision(epoch, stopping)
        if backup is not None:
            records.append(DecisionRecord(backup, "distcb", time.time()))
        decisions = self._log(records)
        self.last_epoch_logs = logs
        if stopping:
            self.phase = Phase.ENDING
        else:
            self.epoch = epoch + 1
            self._merger = BatchMerger(self.epoch, stateful_metrics=self.stateful_metrics)
            self._progress_sent = -1
        self.roster.begin_epoch(self.epoch)  # before the reply: a worker answers at once
        await self.roster.broadcast(EpochReply(epoch, tuple(decisions)))  # type: ignore[arg-type]
        if self.failure is None:  # merged from every worker: a result to tell
            for listener in self._listeners:
                listener.epoch_released(epoch, logs, records)
        await self._observe(epoch, deferred)
        if backup is not None and self._hooks_run:
            pending = [d for d in decisions if d.at > EffectPoint.epoch_end(epoch)]
            await self._journal_barrier(epoch, pending, stopping)

    def _backup_decision(self, epoch: int, stopping: bool) -> BackupModel | None:
        if self.recovery is None or self.failure is not None:
            return None
        return self.recovery.backup_decision(epoch, stopping, self.recorder.outstanding)

    async def _journal_barrier(self, epoch: int, pending: list[Decision], stopping: bool) -> None:
        """Write epoch `epoch`'s journal entry (off the event loop), then commit it once
        every worker has backed it up."""
        recovery = self.recovery
        assert recovery is not None
        try:
            states = await self._in_callbacks(
                lambda: resuming.callback_states(self.callbacks.callbacks)
            )
        except CallbackFailed as exc:
            await self._fail(exc)
            return
        entry = resuming.capture(
            epoch=epoch,
            states=states,
            log=list(self.decision_log),
            recorder=self.recorder,
            learning_rate=float(self.model.optimizer.learning_rate),
            pending=pending,
            global_step=self.state.global_step,
            stopping=stopping,
        )
        if await recovery.write(entry):
            await recovery.maybe_commit(epoch, self._every_rank)

    @property
    def _every_rank(self) -> set[int]:
        # A barrier commits once every rank of the job has its backup on disk, lost ranks
        # included: a restart restores every rank, so a backup a rank never finished
        # leaves nothing to restore it from (it must not count as done by omission).
        return set(range(self.world_size))

    async def _on_backed_up(self, rank: int, message: BackedUp) -> None:
        if self.recovery is not None:
            self.recovery.backed_up(message.epoch, rank, message.error)
            await self.recovery.maybe_commit(message.epoch, self._every_rank)

    def _merge_epoch(self, ends: dict[int, EpochEnd]) -> Logs:
        merged = merge_logs(
            {r: e.logs for r, e in ends.items()},
            {r: e.samples for r, e in ends.items()},
            val_samples={r: e.val_samples for r, e in ends.items()},
            stateful_metrics=self.stateful_metrics,
        )
        self.state.epoch = self.epoch
        self.state.epoch_spread = merged.spread
        self.state.epoch_extras = {r: e.extras for r, e in ends.items()}
        return dict(merged.logs)

    async def _observe(self, epoch: int, deferred: list[DeferredCall]) -> None:
        """Observers' epoch hooks, after the workers were released (DESIGN principle 3)."""
        if not deferred:
            return

        def run_deferred() -> list[DecisionRecord]:
            self.recorder.set_context("epoch_end", epoch)
            for call in deferred:
                self.callbacks.current = call.callback
                call()
            self.callbacks.current = None
            return self.recorder.take()

        try:
            late = await self._in_callbacks(run_deferred)
        except CallbackFailed as exc:
            await self._fail(exc)
            return
        if late:
            logger.warning(
                "an observes_only callback made decisions %s; they go out with the next "
                "message and take effect at the workers' next effect point",
                [r.decision for r in late],
            )
            self.recorder.requeue(late)

    async def _on_train_end(self, rank: int, message: TrainEnd) -> None:
        if self.phase is Phase.TRAINING and self.failure is None and self.roster.training():
            # This worker's fit ended on its own (its data ran out, a local callback
            # stopped it): the others go on without it; it waits for the train end.
            logger.warning("rank %d ended fit at epoch %d before the others", rank, self.epoch)
            self._merger.drop_rank(rank)
            await self._recheck_barriers()
            return
        if self.phase is Phase.TRAINING:
            self.phase = Phase.ENDING
        await self._maybe_end_training()

    async def _maybe_end_training(self) -> None:
        if self.phase is not Phase.ENDING or self._finished.is_set():
            return
        if not self.roster.all_live(lambda w: w.train_ended):
            return
        await self._end_training()

    async def _end_training(self) -> None:
        self.phase = Phase.DONE
        logs = dict(self.last_epoch_logs)
        interrupted = self._restarting is not None

        def end() -> tuple[list[DecisionRecord], list[BaseException]]:
            self.recorder.set_context("train_end", self.epoch)
            if interrupted:  # the sinks close their files; nothing else ends: it goes on
                return [], self.callbacks.on_train_end_each(logs, observers_only=True)
            errors = self.callbacks.on_train_end_each(logs)
            return self.recorder.take(), errors

        records, errors = await self._in_callbacks(end)
        decisions = [] if interrupted else self._log(records)
        for error in errors:
            if self.failure is None:
                self.failure = error
            else:
                logger.error("on_train_end raised after the job had failed: %r", error)
        error_text = describe(self.failure) if self.failure is not None else None
        self.roster.train_end_replied()
        await self.roster.broadcast(TrainEndReply(tuple(decisions), error=error_text))  # type: ignore[arg-type]
        assert self._runtime is not None
        await self._runtime.close_callbacks(self.callbacks.callbacks)
        if not self.roster.live or self.roster.all_live(_said_goodbye):
            self._finished.set()
        else:
            asyncio.get_running_loop().call_later(
                self.config.reply_timeout_s, self._goodbye_late, self.roster, self._finished
            )

    def _goodbye_late(self, roster: Roster, finished: asyncio.Event) -> None:
        """Ranks still connected that did not say they were done within the reply timeout:
        the attempt (of `roster`, `finished`) ends without their reports; say which."""
        if finished.is_set():
            return
        silent = sorted(r for r in roster.live if not _said_goodbye(roster.workers[r]))
        if silent:
            logger.warning(
                "ranks %s did not say they were done within Config.reply_timeout_s=%g s after "
                "the train end: the result has no report from them",
                silent,
                self.config.reply_timeout_s,
            )
        finished.set()

    async def _on_done(self, rank: int, message: Done) -> None:
        self.roster.workers[rank].report = message.report
        if self.phase is Phase.DONE and self.roster.all_live(_said_goodbye):
            self._finished.set()

    async def _on_saved(self, rank: int, message: Saved) -> None:
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
        for listener in self._listeners:
            listener.saved(message)

    async def _on_worker_failed(self, rank: int, message: WorkerFailed) -> None:
        # Its own code raised: a restart would raise again.
        error = WorkerLostError(rank, f"raised {message.error}", message.traceback, retryable=False)
        await self._on_lost(rank, error)

    async def _on_preempted(self, rank: int, message: Preempted) -> None:
        reason = "was preempted (SIGTERM): its pod or node is going away"
        await self._fail(WorkerLostError(rank, reason, retryable=True))

    _HANDLERS: dict[type[Message], Callable[[Coordinator, int, Any], Any]] = {
        BatchFrame: _on_batches,
        EpochEnd: _on_epoch_end,
        TrainEnd: _on_train_end,
        Done: _on_done,
        Saved: _on_saved,
        BackedUp: _on_backed_up,
        Preempted: _on_preempted,
        WorkerFailed: _on_worker_failed,
    }

    # ------------------------------------------------------------------ failures

    async def _on_lost(self, rank: int, error: WorkerLostError) -> None:
        if rank not in self.roster.live:
            return
        await self.roster.drop(rank, error.reason)
        self._merger.drop_rank(rank)
        if self.phase is Phase.DONE:
            said_done = self.roster.workers[rank].done  # (a send after its goodbye failed)
            if not said_done and self.failure is None and self._restarting is None:
                # Training ended and every decision went out, but this rank never said it
                # was done: whether it applied the train-end decisions (restored weights)
                # and ran what follows `fit` (the chief saving the model) is unknown. A
                # failure of that rank, as anywhere else: restarted per the policy (the
                # final barrier's entry says only the train end is left), else the job
                # fails naming it.
                await self._fail(
                    WorkerLostError(
                        rank,
                        f"{error.reason}, after the train end but before it said it was done "
                        "(its train-end decisions and its report may be missing)",
                        error.traceback_text,
                        retryable=error.retryable,
                    )
                )
            if self.roster.all_live(_said_goodbye):
                self._finished.set()
            return
        await self._fail(error)

    async def _fail(self, error: BaseException) -> None:
        """Keep the job's first error, stop the survivors at a common point, and end the
        attempt once they reached `on_train_end` (or `Config.stop_timeout_s` ran out).

        With restarts left, a restartable error ends the attempt in a restart: nothing
        of the epoch in progress is recorded and the survivors exit to be started again.
        Otherwise the epoch in progress ends at the survivors' barrier as usual
        (listeners do not hear of it: its logs come from the survivors alone). After a
        callback raised, no hook runs but `on_train_end`.
        """
        if self.failure is None and self._restarting is None:
            reason = describe(error)
            restart = self._may_restart(error)
            if isinstance(error, CallbackFailed):
                self._callbacks_broken = True
                if error.__cause__ is not None:
                    error = error.__cause__  # the job raises what the callback raised
            if restart:
                self._restarting = error
                reason = f"{reason}; the job goes on from its last committed barrier"
            else:
                if self.recovery is not None:
                    error = self.recovery.final_error(error)
                self.failure = error
            logger.error("%s", reason)
            window = self.recorder.window_steps
            if self.phase is Phase.TRAINING and window is not None:
                at = EffectPoint.batch(self.epoch, self._merger.processed_step + window + 1)
            else:
                at = EffectPoint.epoch_end(self.epoch)
            stop = StopTraining(at=at)
            if not restart:
                self.decision_log.append(DecisionRecord(stop, "distcb", time.time()))
            self.model._stop_training = True
            abort = Abort(reason=reason[:60000], decisions=(stop,), restart=restart)
            await self.roster.broadcast(abort)
            if self.phase is Phase.JOINING:  # nothing started, no callback ran: done
                self.phase = Phase.DONE
                self._finished.set()
                return
            asyncio.get_running_loop().call_later(
                self.config.stop_timeout_s, self._events.put_nowait, _Deadline()
            )
        if self.phase is Phase.DONE:
            return
        if not self.roster.live:
            await self._end_training()
            self._finished.set()
            return
        await self._recheck_barriers()
        await self._maybe_end_training()

    def _may_restart(self, error: BaseException) -> bool:
        return self.recovery is not None and self.recovery.may_restart(error)

    async def _recheck_barriers(self) -> None:
        """A rank left the batch merge and the epoch barrier: they may be complete now."""
        await self._process_steps(self._merger.pop_ready(self.roster.training()))
        await self._maybe_finish_epoch()

    async def _give_up_on_survivors(self) -> None:
        if self._finished.is_set():
            return
        stuck = sorted(self.roster.training())
        if stuck:
            logger.warning(
                "ranks %s did not reach on_train_end within Config.stop_timeout_s=%g s after "
                "the failure",
                stuck,
                self.config.stop_timeout_s,
            )
        if self.phase is not Phase.DONE:
            await self._end_training()
        self._finished.set()


def _said_goodbye(worker: Any) -> bool:
    # The engine took in its Done (its report), not just the roster: the roster marks a
    # rank done as the message arrives, ahead of the engine's queue.
    return worker.report is not None
