"""The coordinator: the async driver of the coordinator machine, one per job.

The machine (`distcb.coordinator.machine`) holds the job's state and rules and
does no I/O. This driver feeds it and carries out what it asks:

* events: the roster turns every connection's messages into events in one
  queue, consumed by one task (`_run_attempt`), so state changes happen one at
  a time, in arrival order; what is queued when the task looks is handed over
  together (batch frames of many workers merge in one trip);
* commands: sends (`Broadcast`, `Drop`), hook runs on a dedicated callback
  thread (user code may block; the event loop must not), journal writes on the
  journal's thread, the identity check, timers, the listeners' notices.

Attempts: with a state directory the job is resumable (DESIGN principle 9).
When an attempt's outcome is a restart (`FailurePolicy`), `run` reads the
entry the next attempt resumes from and starts it; otherwise it returns the
History or raises the job's error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from distcb.callbacks.callback_list import CallbackList
from distcb.callbacks.history import History
from distcb.coordinator import identity
from distcb.coordinator import resume as resuming
from distcb.coordinator.attempt import Phase
from distcb.coordinator.commands import (
    Broadcast,
    CheckIdentity,
    CloseCallbacks,
    Command,
    CommitJournal,
    Drop,
    EpochReleased,
    Finish,
    HooksRaised,
    RunHooks,
    SavedFile,
    StartTimer,
    Steps,
    WriteJournal,
)
from distcb.coordinator.events import Joined, JoinFailed
from distcb.coordinator.journal import JournalMismatchError
from distcb.coordinator.listener import Listener
from distcb.coordinator.machine import CoordinatorMachine
from distcb.coordinator.model_proxy import DecisionRecord, DecisionRecorder, ModelProxy
from distcb.coordinator.roster import Roster
from distcb.coordinator.runtime import JobState, Runtime
from distcb.coordinator.status import job_status
from distcb.protocol.config import Config
from distcb.protocol.connection import Connection
from distcb.protocol.decisions import Decision
from distcb.protocol.errors import CallbackFailed, DistcbError, JoinTimeoutError
from distcb.protocol.integrity import IntegrityError
from distcb.protocol.logs import Logs
from distcb.protocol.messages import Saved

logger = logging.getLogger("distcb.coordinator")

__all__ = ["CallbackFailed", "Coordinator", "Phase"]


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
        config = config or Config()
        user_callbacks = list(callbacks)
        histories = [cb for cb in user_callbacks if isinstance(cb, History)]
        history = histories[0] if histories else History()
        callback_list = CallbackList(user_callbacks + ([] if histories else [history]))
        # A resumable job's journal, backups and restarts (None: a failure ends the job).
        recovery = (
            resuming.Recovery(
                state_dir,
                world_size=world_size,
                callbacks=callback_list.callbacks,
                max_restarts=max_restarts,
                resume=resume,
                backup_every_epochs=config.backup_every_epochs,
            )
            if state_dir
            else None
        )
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self.machine = CoordinatorMachine(
            world_size=world_size,
            config=config,
            callbacks=callback_list,
            history=history,
            stateful_metrics=frozenset(stateful_metrics),
            recovery=recovery,
            post=self._events.put_nowait,
        )
        self._listeners: list[Listener] = []
        self._callback_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="distcb-callbacks"
        )
        self._runtime: Runtime | None = None
        self._timers: list[asyncio.TimerHandle] = []

    # ------------------------------------------------------------------ the machine's state

    @property
    def world_size(self) -> int:
        return self.machine.world_size

    @property
    def config(self) -> Config:
        return self.machine.config

    @property
    def stateful_metrics(self) -> frozenset[str]:
        return self.machine.stateful_metrics

    @property
    def callbacks(self) -> CallbackList:
        return self.machine.callbacks

    @property
    def history(self) -> History:
        return self.machine.history

    @property
    def recovery(self) -> resuming.Recovery | None:
        return self.machine.recovery

    @property
    def state(self) -> JobState:
        return self.machine.state

    @property
    def params(self) -> dict[str, Any]:
        """What callbacks see as `params` (set at the start from the workers' joins)."""
        return self.machine.params

    @params.setter
    def params(self, params: dict[str, Any]) -> None:
        self.machine.params = params

    @property
    def decision_log(self) -> list[DecisionRecord]:
        return self.machine.decision_log

    @property
    def saved_count(self) -> int:
        return self.machine.saved_count

    @property
    def recent_saved(self) -> list[Saved]:
        return self.machine.recent_saved

    @property
    def last_epoch_logs(self) -> Logs:
        return self.machine.last_epoch_logs

    @last_epoch_logs.setter
    def last_epoch_logs(self, logs: Logs) -> None:
        self.machine.last_epoch_logs = logs

    @property
    def last_batch_logs(self) -> Logs:
        return self.machine.last_batch_logs

    @last_batch_logs.setter
    def last_batch_logs(self, logs: Logs) -> None:
        self.machine.last_batch_logs = logs

    @property
    def stop_requested(self) -> str | None:
        """Why a stop was asked for (`request_stop`), e.g. "Ctrl-C"."""
        return self.machine.stop_requested

    @stop_requested.setter
    def stop_requested(self, reason: str | None) -> None:
        self.machine.stop_requested = reason

    @property
    def roster(self) -> Roster:
        return self.machine.attempt.roster

    @property
    def recorder(self) -> DecisionRecorder:
        return self.machine.attempt.recorder

    @property
    def model(self) -> ModelProxy:
        return self.machine.attempt.model

    @property
    def phase(self) -> Phase:
        return self.machine.attempt.phase

    @property
    def epoch(self) -> int:
        return self.machine.attempt.epoch

    @property
    def failure(self) -> BaseException | None:
        """The error the job fails with, once decided."""
        return self.machine.attempt.failure

    @property
    def decisions(self) -> list[Decision]:
        """Every decision made so far, in the order the callbacks made them."""
        return [record.decision for record in self.decision_log]

    @property
    def attempt(self) -> int:
        """0 for the first attempt, then one more after each restart."""
        return self.machine.attempt.number

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
        return self.machine.attempt.merger.processed_step

    @property
    def accepting_joins(self) -> bool:
        return self.phase is Phase.JOINING

    # ------------------------------------------------------------------ the public surface

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
        current = self.machine.attempt
        if current.concerns(attempt):
            current.roster.report_lost(
                rank, reason, traceback_text, retryable=retryable, attempt=attempt
            )

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
        current = self.machine.attempt
        if not current.concerns(attempt):
            return
        roster = current.roster
        await roster.wait_disconnected(rank, self.config.reply_timeout_s)
        if rank not in roster.workers:  # it never joined, yet ended without an error
            reason += (
                "; it never joined the job: did its script add "
                "distcb.keras.WorkerCallback() to model.fit?"
            )
        if self.machine.attempt is current:  # not a report about an attempt that has ended
            roster.report_lost(rank, reason, traceback_text, retryable=retryable, attempt=attempt)

    def request_stop(self, reason: str) -> bool:
        """Stop the job at its next epoch end, as a callback setting ``model.stop_training``
        would (a Ctrl-C): `on_train_end` runs and `run` returns the History. Call on the event
        loop. Returns False when no epoch end is coming (the job has not started training):
        the caller then stops the job itself."""
        if self.machine.stop_requested is None:
            self.machine.stop_requested = reason
        return self.phase is not Phase.JOINING

    def add_listener(self, listener: Listener) -> None:
        """Be told of released epochs, saves, restarts and the job's end (`JobListener`)."""
        self._listeners.append(listener)

    def status(self) -> dict[str, Any]:
        """A picture of the job for ``/status`` and status pages."""
        return job_status(self.machine.snapshot())

    def waiting_since(self) -> float | None:
        """When the coordinator last made progress (`time.monotonic()`), while it waits for
        workers to train or to end; None otherwise (joining, in a callback, after a failure,
        done). The stall watchdog and ``/readyz`` measure from here."""
        return self.machine.waiting_since()

    # ------------------------------------------------------------------ the driver

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
        machine = self.machine
        self._runtime = machine.runtime = Runtime(loop, self.config, self.state)
        failure: BaseException | None = None
        try:
            recovery = self.recovery
            if recovery is not None:
                machine.attempt.resume_from = await recovery.open()
            while True:
                await self._run_attempt()
                attempt = machine.attempt
                if attempt.restarting is None:
                    break
                assert recovery is not None
                entry = await recovery.next_attempt(attempt.restarting.error)
                self._events = asyncio.Queue()
                machine.next_attempt(entry, self._events.put_nowait)
                for listener in self._listeners:
                    listener.restarting(attempt.number, attempt.restarting.error)
            if machine.attempt.failure is not None:
                raise machine.attempt.failure
            history: History = machine.result()
            return history
        except BaseException as exc:
            failure = exc
            raise
        finally:
            for timer in self._timers:
                timer.cancel()
            await self._runtime.aclose()
            self._callback_thread.shutdown(wait=False)
            if self.recovery is not None:
                self.recovery.close()
            for listener in self._listeners:
                with contextlib.suppress(Exception):
                    listener.ended(failure)

    async def _run_attempt(self) -> None:
        """Feed the current attempt until it finishes."""
        loop = asyncio.get_running_loop()
        attempt = self.machine.attempt
        roster, events = attempt.roster, self._events
        watchdog = loop.create_task(roster.watch_heartbeats(), name="distcb-heartbeats")
        try:
            await self._drive(self.machine.handle([await self._join(roster)]))
            while not attempt.finished:
                batch = [await events.get()]
                while not events.empty():
                    batch.append(events.get_nowait())
                for event in batch:
                    roster.taken(event)
                await self._drive(self.machine.handle(batch))
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            await roster.close_all()

    async def _join(self, roster: Roster) -> Joined | JoinFailed:
        try:
            async with asyncio.timeout(self.config.join_timeout_s):
                await roster.all_joined.wait()
        except TimeoutError:
            error: DistcbError = JoinTimeoutError(
                roster.missing(), self.config.join_timeout_s, self.world_size
            )
            return JoinFailed(error)
        if roster.never_joined:
            return JoinFailed(roster.never_joined[min(roster.never_joined)])
        return Joined()

    async def _drive(self, steps: Steps) -> None:
        """Carry out the commands of one machine step, sending back each one's answer."""
        answer: Any = None
        while True:
            try:
                command = steps.send(answer)
            except StopIteration:
                return
            answer = await self._carry_out(command)

    async def _carry_out(self, command: Command) -> Any:
        machine = self.machine
        if isinstance(command, Broadcast):
            await machine.attempt.roster.broadcast(command.message)
        elif isinstance(command, RunHooks):
            loop = asyncio.get_running_loop()
            try:
                return await loop.run_in_executor(self._callback_thread, command.fn)
            except Exception as exc:
                return HooksRaised(exc)
        elif isinstance(command, Drop):
            await machine.attempt.roster.close(command.rank, command.reason)
        elif isinstance(command, EpochReleased):
            for listener in self._listeners:
                listener.epoch_released(command.epoch, command.logs, command.records)
        elif isinstance(command, SavedFile):
            for listener in self._listeners:
                listener.saved(command.message)
        elif isinstance(command, StartTimer):
            loop = asyncio.get_running_loop()
            self._timers.append(
                loop.call_later(command.delay_s, self._events.put_nowait, command.event)
            )
        elif isinstance(command, WriteJournal):
            assert machine.recovery is not None
            return await machine.recovery.write(command.entry)
        elif isinstance(command, CommitJournal):
            assert machine.recovery is not None
            await machine.recovery.commit(command.epoch)
        elif isinstance(command, CheckIdentity):
            assert machine.recovery is not None
            try:
                await asyncio.to_thread(
                    identity.check_workers, machine.recovery.journal, command.workers
                )
            except (JournalMismatchError, IntegrityError) as exc:
                return exc
        elif isinstance(command, CloseCallbacks):
            assert self._runtime is not None
            await self._runtime.close_callbacks(self.callbacks.callbacks)
        elif isinstance(command, Finish):
            pass  # the attempt's `finished` says it; `_run_attempt` stops feeding it
        return None
