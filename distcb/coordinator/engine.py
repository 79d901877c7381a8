"""The coordinator: one engine per job, fed by worker connections.

The roster turns every connection's messages into events in one queue,
consumed by one engine task, the sole owner of the job's state: state changes
happen one at a time, in arrival order. Callback hooks run on a dedicated
thread (user code may block; the event loop must not). The phases::

    JOINING -> TRAINING -> ENDING -> DONE
         \\________\\_________\\-> (failure: the error is kept, survivors are stopped at a
                                  common point, on_train_end still runs)

One epoch barrier, in order (`_finish_epoch`): merge the workers' epoch logs,
run the deciding callbacks (`on_epoch_end`, then the next `on_epoch_begin`) in
one trip to the callback thread, release every worker with the decisions,
tell the listeners, and only then run the observers (sinks, History).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import enum
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from distcb.callbacks.callback_list import CallbackList, DeferredCall
from distcb.callbacks.history import History
from distcb.coordinator.aggregate import BatchMerger, MergedStep, merge_logs
from distcb.coordinator.model_proxy import DecisionRecord, DecisionRecorder, ModelProxy
from distcb.coordinator.roster import Roster, WorkerLost
from distcb.coordinator.runtime import JobState, Runtime
from distcb.protocol.config import Config
from distcb.protocol.decisions import Decision, EffectPoint, StopTraining
from distcb.protocol.errors import (
    AggregationError,
    DistcbError,
    JoinTimeoutError,
    ProtocolError,
    WorkerLostError,
)
from distcb.protocol.logs import Logs
from distcb.protocol.messages import (
    Abort,
    BatchFrame,
    Done,
    EpochEnd,
    EpochReply,
    Message,
    Progress,
    Saved,
    Start,
    TrainEnd,
    TrainEndReply,
    WorkerFailed,
)
from distcb.transport.base import Connection

logger = logging.getLogger("distcb.coordinator")
_T = TypeVar("_T")
_RECENT = 200  # decisions and saves kept for status pages


class Phase(enum.Enum):
    JOINING = "joining"
    TRAINING = "training"
    ENDING = "ending"
    DONE = "done"


class JobListener(Protocol):
    """What the engine tells listeners (Tune's bridge, journals, status pages).

    Called on the event loop, in order; a listener must not block.
    """

    def epoch_released(self, epoch: int, logs: Logs, records: Sequence[DecisionRecord]) -> None:
        """Epoch `epoch`'s decisions went out to every worker."""

    def saved(self, message: Saved) -> None:
        """The chief reported a save (or its failure)."""

    def ended(self, failure: BaseException | None) -> None:
        """The job ended (`on_train_end` ran and the sinks were closed)."""


@dataclass(frozen=True)
class _Deadline:
    """Event: the stop timeout after a failure ran out."""


class CallbackFailed(DistcbError):
    """A coordinator callback raised: the job stops; workers are told why."""


class Coordinator:
    """Runs the callback chain once for `world_size` workers and sends them its decisions.

    Args:
        callbacks: Keras-style callbacks (distcb's or unmodified keras.callbacks.Callback
            subclasses). A `History` is appended, as Keras does.
        world_size: the number of workers (ranks 0 .. world_size - 1); rank 0 is the chief.
        config: limits and timeouts.
        stateful_metrics: metric names taken from the chief rather than averaged.

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
    ):
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be an int >= 1, received {world_size!r}")
        if config is not None and not isinstance(config, Config):
            raise TypeError(f"config must be a distcb.Config, received {type(config).__name__}")
        self.world_size = world_size
        self.config = config or Config()
        self.stateful_metrics = frozenset(stateful_metrics)
        user_callbacks = list(callbacks)
        histories = [cb for cb in user_callbacks if isinstance(cb, History)]
        self.history = histories[0] if histories else History()
        self.callbacks = CallbackList(user_callbacks + ([] if histories else [self.history]))
        self.recorder = DecisionRecorder()
        self.recorder.current_callback = lambda: self.callbacks.current
        self.model = ModelProxy(self.recorder)
        self.state = JobState(num_workers=world_size)
        self.phase = Phase.JOINING
        self.params: dict[str, Any] = {}
        self.decision_log: list[DecisionRecord] = []
        self.saved_count = 0
        self.recent_saved: list[Saved] = []
        self.failure: BaseException | None = None
        self.epoch = 0
        self.last_epoch_logs: Logs = {}
        self.last_batch_logs: Logs = {}
        self._listeners: list[JobListener] = []
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self.roster = Roster(
            world_size,
            self.config,
            post=self._events.put_nowait,
            accepting=lambda: self.phase is Phase.JOINING,
        )
        self.roster.processed_step = lambda: self._merger.processed_step
        self._merger = BatchMerger(0, stateful_metrics=self.stateful_metrics)
        self._epoch_ends: dict[int, EpochEnd] = {}
        self._progress_sent = -1  # the last processed step told to the workers this epoch
        self._callback_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="distcb-callbacks"
        )
        self._runtime: Runtime | None = None
        self._finished = asyncio.Event()
        self._callbacks_broken = False  # a callback raised: no hook runs but on_train_end

    # ------------------------------------------------------------------ the public surface

    @property
    def decisions(self) -> list[Decision]:
        """Every decision made so far, in the order the callbacks made them."""
        return [record.decision for record in self.decision_log]

    async def serve(self, connection: Connection) -> None:
        """Handle one worker connection until it closes (a transport calls this)."""
        await self.roster.serve(connection)

    def report_lost(self, rank: int, reason: str, traceback_text: str | None = None) -> None:
        """A launcher saw worker `rank` die (exit code, dead actor). Call on the event loop."""
        self.roster.report_lost(rank, reason, traceback_text)

    async def report_exit(self, rank: int, reason: str, traceback_text: str | None = None) -> None:
        """A launcher saw worker `rank`'s process end: once what it sent before it ended
        has been read (bounded by `Config.reply_timeout_s`), it is lost unless it said
        goodbye. A clean exit right after its last message is therefore no failure."""
        await self.roster.wait_disconnected(rank, self.config.reply_timeout_s)
        self.roster.report_lost(rank, reason, traceback_text)

    def add_listener(self, listener: JobListener) -> None:
        """Be told of released epochs, saves and the job's end (see `JobListener`)."""
        self._listeners.append(listener)

    @property
    def accepting_joins(self) -> bool:
        return self.phase is Phase.JOINING

    # ------------------------------------------------------------------ the engine

    async def run(self) -> History:
        """Run the job to its end; returns the aggregated History.

        Raises:
            JoinTimeoutError: not every rank joined in time.
            WorkerLostError: a worker disconnected, went silent or raised.
            AggregationError: worker logs could not be merged.
            ProtocolError: the workers' join parameters disagree.
            Exception: what a coordinator callback raised.
        """
        loop = asyncio.get_running_loop()
        self._runtime = Runtime(loop, self.config, self.state)
        watchdog = loop.create_task(self.roster.watch_heartbeats(), name="distcb-heartbeats")
        try:
            await self._join()
            if self.failure is None:
                await self._start()
            while not self._finished.is_set():
                event = await self._events.get()
                try:
                    await self._handle(event)
                except AggregationError as exc:
                    await self._fail(exc)
            if self.failure is not None:
                raise self.failure
            self.history.worker_reports = {
                r: w.report for r, w in sorted(self.roster.workers.items()) if w.report is not None
            }
            return self.history
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            await self.roster.close_all()
            await self._runtime.aclose()
            self._callback_thread.shutdown(wait=False)
            for listener in self._listeners:
                with contextlib.suppress(Exception):
                    listener.ended(self.failure)

    async def _join(self) -> None:
        try:
            await asyncio.wait_for(self.roster.all_joined.wait(), self.config.join_timeout_s)
        except TimeoutError:
            missing = self.roster.missing()
            error: DistcbError = JoinTimeoutError(
                missing, self.config.join_timeout_s, self.world_size
            )
        else:
            if not self.roster.never_joined:
                return
            error = self.roster.never_joined[min(self.roster.never_joined)]
        self.failure = error
        self.phase = Phase.DONE
        await self.roster.broadcast(Abort(reason=str(error)))
        self._finished.set()

    async def _handle(self, event: Any) -> None:
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
        """Run `fn` (hook calls) on the callback thread; the decisions it made are logged.

        Raises:
            CallbackFailed: a callback raised (the job then ends with that error).
        """
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._callback_thread, fn)
        except Exception as exc:
            culprit = self.callbacks.current
            self.callbacks.current = None
            name = type(culprit).__name__ if culprit is not None else "a callback"
            raise CallbackFailed(
                f"coordinator callback {name} raised {type(exc).__name__}: {exc}\n\n"
                + "".join(traceback.format_exception(exc))
            ) from exc

    def _log(self, records: Sequence[DecisionRecord]) -> list[Decision]:
        self.decision_log.extend(records)
        return [record.decision for record in records]

    # ------------------------------------------------------------------ phases

    async def _start(self) -> None:
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
        self.model.optimizer._sync(self.roster.workers[0].params.learning_rate)
        self.callbacks.attach(self.params, self.model, self._runtime)
        self.phase = Phase.TRAINING
        self.roster.begin_training()
        # A resumed fit (Keras `initial_epoch`) counts its epochs from there.
        self.epoch = first = int(self.params.get("initial_epoch") or 0)
        self.roster.begin_epoch(first)
        self._merger = BatchMerger(first, stateful_metrics=self.stateful_metrics)

        def begin() -> list[DecisionRecord]:
            self.recorder.set_context("train_begin", first)
            self.callbacks.on_train_begin()
            if not self.model.stop_training:
                self.callbacks.on_epoch_begin(first)
            return self.recorder.take()

        try:
            decisions = self._log(await self._in_callbacks(begin))
        except CallbackFailed as exc:
            await self._fail(exc)
            return
        start = Start(
            decisions=tuple(decisions),  # type: ignore[arg-type]
            window_steps=flow_window,
            want_batch_logs=want_batch_logs,
            histogram_freq=self.callbacks.histogram_freq,
            want_model_json=self.callbacks.wants_model_json,
            **self.callbacks.chief_tensorboard_requests,
        )
        await self.roster.broadcast(start)

    async def _on_batches(self, rank: int, frame: BatchFrame) -> None:
        self._merger.add(rank, frame)
        await self._process_steps(self._merger.pop_ready(self.roster.training()))

    async def _process_steps(self, steps: Sequence[MergedStep]) -> None:
        if not steps or self.phase is not Phase.TRAINING:
            return
        epoch = self.epoch
        self.last_batch_logs = dict(steps[-1].logs)
        decisions: list[Decision] = []
        if self.callbacks.has_batch_hooks and not self._callbacks_broken:

            def run_all() -> list[DecisionRecord]:
                # One trip to the callback thread for all ready steps, but each step is
                # its own hook chain so that each decision gets its own effect step.
                made: list[DecisionRecord] = []
                for merged in steps:
                    self.state.global_step += 1
                    self.state.batch_spread = merged.spread
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
            self.state.batch_spread = steps[-1].spread
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
        await self._process_steps(self._merger.flush(training))
        if self._callbacks_broken:
            # The failure's stop takes effect here; no hook runs on a broken chain.
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

        def end() -> tuple[list[DecisionRecord], list[BaseException]]:
            self.recorder.set_context("train_end", self.epoch)
            errors = self.callbacks.on_train_end_each(logs)
            return self.recorder.take(), errors

        records, errors = await self._in_callbacks(end)
        decisions = self._log(records)
        for error in errors:
            if self.failure is None:
                self.failure = error
            else:
                logger.error("on_train_end raised after the job had failed: %r", error)
        error_text = _reason(self.failure) if self.failure is not None else None
        self.roster.train_end_replied()
        await self.roster.broadcast(TrainEndReply(tuple(decisions), error=error_text))  # type: ignore[arg-type]
        assert self._runtime is not None
        await self._runtime.close_callbacks(self.callbacks.callbacks)
        if not self.roster.live or self.roster.all_live(lambda w: w.done):
            self._finished.set()
        else:
            asyncio.get_running_loop().call_later(self.config.reply_timeout_s, self._finished.set)

    async def _on_done(self, rank: int, message: Done) -> None:
        self.roster.workers[rank].report = message.report
        if self.phase is Phase.DONE and self.roster.all_live(lambda w: w.done):
            self._finished.set()

    async def _on_saved(self, rank: int, message: Saved) -> None:
        self.saved_count += 1
        self.recent_saved = [*self.recent_saved[-(_RECENT - 1) :], message]
        if message.error:
            logger.warning("rank %d could not save %s: %s", rank, message.filepath, message.error)
        for listener in self._listeners:
            listener.saved(message)

    async def _on_worker_failed(self, rank: int, message: WorkerFailed) -> None:
        await self._on_lost(
            rank, WorkerLostError(rank, f"training raised {message.error}", message.traceback)
        )

    _HANDLERS: dict[type[Message], Callable[[Coordinator, int, Any], Any]] = {
        BatchFrame: _on_batches,
        EpochEnd: _on_epoch_end,
        TrainEnd: _on_train_end,
        Done: _on_done,
        Saved: _on_saved,
        WorkerFailed: _on_worker_failed,
    }

    # ------------------------------------------------------------------ failures

    async def _on_lost(self, rank: int, error: WorkerLostError) -> None:
        if rank not in self.roster.live:
            return
        await self.roster.drop(rank, error.reason)
        self._merger.drop_rank(rank)
        if self.phase is Phase.DONE:
            if self.roster.all_live(lambda w: w.done):
                self._finished.set()
            return
        await self._fail(error)

    async def _fail(self, error: BaseException) -> None:
        """Keep the job's first error, stop the survivors at a common point, and end the
        job once they reached `on_train_end` (or `Config.stop_timeout_s` ran out).

        The epoch in progress ends at the survivors' barrier as usual (listeners do
        not hear of it: its logs come from the survivors alone). After a callback
        raised, no hook runs but `on_train_end`.
        """
        if self.failure is None:
            reason = _reason(error)
            if isinstance(error, CallbackFailed):
                self._callbacks_broken = True
                if error.__cause__ is not None:
                    error = error.__cause__  # the job raises what the callback raised
            self.failure = error
            logger.error("%s", reason)
            window = self.recorder.window_steps
            if self.phase is Phase.TRAINING and window is not None:
                at = EffectPoint.batch(self.epoch, self._merger.processed_step + window + 1)
            else:
                at = EffectPoint.epoch_end(self.epoch)
            stop = StopTraining(at=at)
            self.decision_log.append(DecisionRecord(stop, "distcb", time.time()))
            self.model._stop_training = True
            await self.roster.broadcast(Abort(reason=reason[:60000], decisions=(stop,)))
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

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """A picture of the job for ``/status`` and status pages (JSON values; floats may
        be non-finite: the server makes them strict JSON)."""
        workers = self.roster.status()
        live = [w for w in workers if w["state"] != "lost"]
        front = max(((w["epoch"], w["step"]) for w in live), default=(0, -1))
        for worker in workers:
            worker["lag_steps"] = front[1] - worker["step"] if worker["epoch"] == front[0] else None
            worker["lag_epochs"] = front[0] - worker["epoch"]
        statistics: dict[str, Any] = {}
        for callback in self.callbacks.callbacks:
            stats = getattr(callback, "statistics", None)
            if callable(stats):
                with contextlib.suppress(Exception):
                    value = stats()
                    if dataclasses.is_dataclass(value) and not isinstance(value, type):
                        value = dataclasses.asdict(value)  # JSON for /status
                    name, count = type(callback).__name__, 1
                    while (key := name if count == 1 else f"{name}#{count}") in statistics:
                        count += 1  # two sinks of one class keep both
                    statistics[key] = value
        return {
            "phase": self.phase.value,
            "world_size": self.world_size,
            "epoch": self.epoch,
            "epochs": self.params.get("epochs"),
            "processed_step": self._merger.processed_step,
            "global_step": self.state.global_step,
            "workers": workers,
            "joined": sorted(self.roster.workers),
            "live": sorted(self.roster.live),
            "history": {k: list(v[-500:]) for k, v in self.history.history.items()},
            "history_epochs": list(self.history.epoch[-500:]),
            "last_epoch_logs": dict(self.last_epoch_logs),
            "last_batch_logs": dict(self.last_batch_logs),
            "epoch_spread": {k: s.to_dict() for k, s in self.state.epoch_spread.items()},
            "batch_spread": {k: s.to_dict() for k, s in self.state.batch_spread.items()},
            "monitored": sorted(
                {str(cb.monitor) for cb in self.callbacks.callbacks if hasattr(cb, "monitor")}
            ),
            "decisions": [r.to_json() for r in self.decision_log[-_RECENT:]],
            "decision_count": len(self.decision_log),
            "saved_count": self.saved_count,
            "sinks": statistics,
            "failure": _reason(self.failure) if self.failure is not None else None,
        }


def _reason(error: BaseException) -> str:
    return str(error) if isinstance(error, DistcbError) else f"{type(error).__name__}: {error}"
