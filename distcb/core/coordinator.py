"""The coordinator: one state machine per job, fed by worker connections.

The roster turns every connection's messages into events in one queue, consumed
by one engine task, the sole owner of the job's state: state changes happen one
at a time, in arrival order. Callback hooks run on a dedicated thread (user code
may block; the event loop must not). The phases:

    JOINING -> TRAINING -> ENDING -> DONE
         \\________\\_________\\-> (failure: WorkerLostError, on_train_end still runs)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from distcb.callbacks.callback_list import CallbackList, DeferredCall
from distcb.callbacks.history import History
from distcb.core.aggregate import BatchMerger, MergedStep, merge_logs
from distcb.core.config import Config
from distcb.core.decisions import Decision, EffectPoint, StopTraining
from distcb.core.errors import (
    AggregationError,
    DistcbError,
    JoinTimeoutError,
    WorkerLostError,
)
from distcb.core.messages import (
    Abort,
    BatchFrame,
    Done,
    EpochEnd,
    EpochReply,
    Logs,
    Progress,
    Saved,
    Start,
    TrainEnd,
    TrainEndReply,
    WorkerFailed,
    encode_logs,
)
from distcb.core.model_proxy import DecisionRecorder, ModelProxy
from distcb.core.roster import Roster, WorkerLost
from distcb.core.runtime import JobState, Runtime
from distcb.core.transport import Connection

logger = logging.getLogger("distcb.coordinator")


class Phase(enum.Enum):
    JOINING = "joining"
    TRAINING = "training"
    ENDING = "ending"
    DONE = "done"


@dataclass(frozen=True)
class _Deadline:
    """Event: the stop timeout after a failure ran out."""


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
        self.world_size = world_size
        self.config = config or Config()
        self.stateful_metrics = frozenset(stateful_metrics)
        user_callbacks = list(callbacks)
        histories = [cb for cb in user_callbacks if isinstance(cb, History)]
        self.history = histories[0] if histories else History()
        self.callbacks = CallbackList(user_callbacks + ([] if histories else [self.history]))
        self.recorder = DecisionRecorder()
        self.model = ModelProxy(self.recorder)
        self.state = JobState(num_workers=world_size)
        self.phase = Phase.JOINING
        self.params: dict[str, Any] = {}
        self.decisions: list[Decision] = []
        self.saved: list[Saved] = []
        self.failure: DistcbError | None = None
        self.epoch = 0
        self.last_epoch_logs: Logs = {}
        self.last_batch_logs: Logs = {}
        self._events: asyncio.Queue[Any] = asyncio.Queue()
        self.roster = Roster(
            world_size,
            self.config,
            post=self._events.put_nowait,
            accepting=lambda: self.phase is Phase.JOINING,
        )
        self._merger = BatchMerger(0, stateful_metrics=self.stateful_metrics)
        self._epoch_ends: dict[int, EpochEnd] = {}
        self._progress_sent = -1  # the last processed step told to the workers this epoch
        self._callback_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="distcb-callbacks"
        )
        self._runtime: Runtime | None = None
        self._finished = asyncio.Event()

    # ------------------------------------------------------------------ connections

    async def serve(self, connection: Connection) -> None:
        """Handle one worker connection until it closes (a transport calls this)."""
        await self.roster.serve(connection)

    def report_lost(self, rank: int, reason: str, traceback_text: str | None = None) -> None:
        """A launcher saw worker `rank` die (exit code, dead actor). Call on the event loop."""
        self.roster.report_lost(rank, reason, traceback_text)

    # ------------------------------------------------------------------ the engine

    async def run(self) -> History:
        """Run the job to its end; returns the aggregated History.

        Raises:
            JoinTimeoutError: not every rank joined in time.
            WorkerLostError: a worker disconnected, went silent or raised.
            AggregationError: worker logs could not be merged.
        """
        loop = asyncio.get_running_loop()
        self._runtime = Runtime(loop, self.config, self.state)
        watchdog = loop.create_task(self.roster.watch_heartbeats(), name="distcb-heartbeats")
        try:
            try:
                await asyncio.wait_for(self.roster.all_joined.wait(), self.config.join_timeout_s)
            except TimeoutError:
                missing = self.roster.missing()
                self.failure = JoinTimeoutError(
                    missing, self.config.join_timeout_s, self.world_size
                )
                await self.roster.broadcast(Abort(reason=str(self.failure)))
                raise self.failure from None
            if self.roster.never_joined:
                self.failure = self.roster.never_joined[min(self.roster.never_joined)]
                await self.roster.broadcast(Abort(reason=str(self.failure)))
                raise self.failure
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
        if isinstance(message, BatchFrame):
            await self._on_batches(rank, message)
        elif isinstance(message, EpochEnd):
            await self._on_epoch_end(rank, message)
        elif isinstance(message, TrainEnd):
            await self._on_train_end(rank)
        elif isinstance(message, Done):
            await self._on_done(rank, message)
        elif isinstance(message, Saved):
            self.saved.append(message)
            if message.error:
                logger.warning(
                    "rank %d could not save %s: %s", rank, message.filepath, message.error
                )
        elif isinstance(message, WorkerFailed):
            await self._on_lost(
                rank, WorkerLostError(rank, f"training raised {message.error}", message.traceback)
            )
        else:
            await self._on_lost(
                rank, WorkerLostError(rank, f"sent a coordinator message {message.type!r}")
            )

    async def _in_callbacks(
        self, phase: str, epoch: int, step: int, fn: Callable[[], Any]
    ) -> list[Decision]:
        """Run hooks on the callback thread; returns the decisions they made."""
        loop = asyncio.get_running_loop()

        def run() -> list[Decision]:
            self.recorder.set_context(phase, epoch, step)
            fn()
            return self.recorder.take()

        decisions: list[Decision] = await loop.run_in_executor(self._callback_thread, run)
        self.decisions.extend(decisions)
        return decisions

    # ------------------------------------------------------------------ phases

    async def _start(self) -> None:
        self.params = self.roster.merged_params()
        decides_on_batch = self.callbacks.decides_on_batch
        self.recorder.window_steps = self.config.window_steps if decides_on_batch else None
        self.model.optimizer._sync(self.roster.workers[0].params.get("learning_rate", float("nan")))
        self.callbacks.attach(self.params, self.model, self._runtime)
        self.phase = Phase.TRAINING
        # A resumed fit (Keras `initial_epoch`) counts its epochs from there.
        self.epoch = first = int(self.params.get("initial_epoch") or 0)
        self._merger = BatchMerger(first, stateful_metrics=self.stateful_metrics)

        def begin() -> None:
            self.callbacks.on_train_begin()
            if not self.model.stop_training:
                self.callbacks.on_epoch_begin(first)

        decisions = await self._in_callbacks("train_begin", first, -1, begin)
        start = Start(
            decisions=tuple(decisions),
            window_steps=self.recorder.window_steps,
            want_batch_logs=self.callbacks.has_batch_hooks,
            histogram_freq=self.callbacks.histogram_freq,
            want_model_json=self.callbacks.wants_model_json,
            **self.callbacks.chief_tensorboard_requests,
        )
        await self.roster.broadcast(start)

    async def _on_batches(self, rank: int, frame: BatchFrame) -> None:
        if frame.epoch != self.epoch:
            raise AggregationError(
                f"[Rank {rank}] sent batch logs for epoch {frame.epoch} during epoch {self.epoch}",
                rank=rank,
            )
        self._merger.add(rank, frame.entries)
        await self._process_steps(self._merger.pop_ready(self.roster.training()))

    async def _process_steps(self, steps: Sequence[MergedStep]) -> None:
        if not steps:
            return
        epoch = self.epoch
        self.last_batch_logs = dict(steps[-1].logs)
        decisions: list[Decision] = []
        if self.callbacks.has_batch_hooks:

            def run_all() -> list[Decision]:
                # One trip to the callback thread for all ready steps, but each step is
                # its own hook chain so that each decision gets its own effect step.
                made: list[Decision] = []
                for merged in steps:
                    self.state.global_step += 1
                    self.state.batch_spread = merged.spread
                    self.recorder.set_context("batch", epoch, merged.step)
                    self._batch_hooks(merged)
                    made += self.recorder.take()
                return made

            loop = asyncio.get_running_loop()
            decisions = await loop.run_in_executor(self._callback_thread, run_all)
            self.decisions.extend(decisions)
        else:
            self.state.global_step += len(steps)
            self.state.batch_spread = steps[-1].spread
        last = steps[-1].step
        window = self.recorder.window_steps
        # Workers need the processed step only to stay within the window; they send a
        # frame every W/4 steps, and hearing back every W/2 keeps them off the edge.
        if decisions or (window is not None and last - self._progress_sent >= max(1, window // 2)):
            self._progress_sent = last
            await self.roster.broadcast(Progress(epoch, last, tuple(decisions)))

    def _batch_hooks(self, merged: MergedStep) -> None:
        self.callbacks.on_train_batch_begin(merged.step)
        self.callbacks.on_train_batch_end(merged.step, dict(merged.logs))

    async def _on_epoch_end(self, rank: int, message: EpochEnd) -> None:
        if message.epoch != self.epoch or rank in self._epoch_ends:
            raise AggregationError(
                f"[Rank {rank}] ended epoch {message.epoch} while the job is at epoch {self.epoch}",
                rank=rank,
            )
        self._epoch_ends[rank] = message
        await self._maybe_finish_epoch()

    async def _maybe_finish_epoch(self) -> None:
        training = self.roster.training()
        if self.phase is not Phase.TRAINING or not training:
            return
        if not all(r in self._epoch_ends for r in training):
            return
        epoch = self.epoch
        await self._process_steps(self._merger.flush(training))
        ends = {r: self._epoch_ends[r] for r in training}
        merged = merge_logs(
            {r: e.logs for r, e in ends.items()},
            {r: e.samples for r, e in ends.items()},
            val_samples={r: e.val_samples for r, e in ends.items()},
            stateful_metrics=self.stateful_metrics,
        )
        self.state.epoch = epoch
        self.state.epoch_spread = merged.spread
        self.state.epoch_extras = {r: e.extras for r, e in ends.items()}
        logs = dict(merged.logs)
        planned_last = epoch + 1 >= int(self.params.get("epochs") or 1)

        deferred: list[DeferredCall] = []

        def end_epoch() -> None:
            self.callbacks.on_epoch_end_deferring(epoch, logs, deferred)

        decisions = await self._in_callbacks("epoch_end", epoch, -1, end_epoch)
        self.last_epoch_logs = logs
        stopping = self.model.stop_training or planned_last or self.failure is not None
        if not stopping:
            decisions += await self._in_callbacks(
                "epoch_begin",
                epoch + 1,
                -1,
                lambda: self.callbacks.on_epoch_begin_deferring(epoch + 1, deferred),
            )
            self.epoch = epoch + 1
            self._merger = BatchMerger(self.epoch, stateful_metrics=self.stateful_metrics)
            self._progress_sent = -1
        else:
            self.phase = Phase.ENDING
        self._epoch_ends = {}
        await self.roster.broadcast(EpochReply(epoch, tuple(decisions)))
        if deferred:
            # Workers are released: now the observers (sinks, History) do their work.
            def run_deferred() -> None:
                for call in deferred:
                    call()

            late = await self._in_callbacks("epoch_end", epoch, -1, run_deferred)
            if late:
                logger.warning(
                    "an observes_only callback made decisions %s; they take effect at the "
                    "next epoch",
                    late,
                )
                del self.decisions[-len(late) :]  # counted when they are sent
                self.recorder.record_all(late)

    async def _on_train_end(self, rank: int) -> None:
        self.roster.workers[rank].train_ended = True
        if self.phase is Phase.TRAINING and self.failure is None and self.roster.training():
            # This worker's fit ended on its own (its data ran out, a local callback
            # stopped it): the others go on without it; it waits for the train end.
            logger.warning("rank %d ended fit at epoch %d before the others", rank, self.epoch)
            await self._recheck_barriers()
            return
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
        try:
            decisions = await self._in_callbacks(
                "train_end", self.epoch, -1, lambda: self.callbacks.on_train_end(logs)
            )
        except Exception as exc:  # a failing on_train_end must not hide an earlier failure
            if self.failure is None:
                raise
            logger.exception("on_train_end raised after the job had failed: %s", exc)
            decisions = []
        error = str(self.failure) if self.failure is not None else None
        await self.roster.broadcast(TrainEndReply(tuple(decisions), error=error))
        assert self._runtime is not None
        await self._runtime.close_callbacks(self.callbacks.callbacks)
        if not self.roster.live or self.roster.all_live(lambda w: w.done):
            self._finished.set()
        else:
            asyncio.get_running_loop().call_later(self.config.reply_timeout_s, self._finished.set)

    async def _on_done(self, rank: int, message: Done) -> None:
        worker = self.roster.workers[rank]
        worker.done = True
        worker.report = message.report
        if self.phase is Phase.DONE and self.roster.all_live(lambda w: w.done):
            self._finished.set()

    # ------------------------------------------------------------------ failures

    async def _on_lost(self, rank: int, error: WorkerLostError) -> None:
        if rank not in self.roster.live:
            return
        await self.roster.drop(rank, error.reason)
        if self.phase is Phase.DONE:
            if self.roster.all_live(lambda w: w.done):
                self._finished.set()
            return
        await self._fail(error)

    async def _fail(self, error: DistcbError) -> None:
        if self.failure is None:
            self.failure = error
            logger.error("%s", error)
            # Stop the survivors at a common point they cannot have passed yet.
            if self.phase is Phase.TRAINING and self.recorder.window_steps is not None:
                at = EffectPoint.batch(
                    self.epoch, self._merger.processed_step + self.recorder.window_steps + 1
                )
            else:
                at = EffectPoint.epoch_end(self.epoch)
            stop = StopTraining(at=at)
            self.decisions.append(stop)
            self.model._stop_training = True
            await self.roster.broadcast(Abort(reason=str(error), decisions=(stop,)))
            asyncio.get_running_loop().call_later(
                self.config.stop_timeout_s, self._events.put_nowait, _Deadline()
            )
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
        """A JSON-compatible picture of the job (for /status and humans)."""
        return {
            "phase": self.phase.value,
            "world_size": self.world_size,
            **self.roster.status(),
            "epoch": self.epoch,
            "processed_step": self._merger.processed_step,
            "global_step": self.state.global_step,
            "last_epoch_logs": encode_logs(self.last_epoch_logs),
            "last_batch_logs": encode_logs(self.last_batch_logs),
            "epoch_spread": {k: s.to_dict() for k, s in self.state.epoch_spread.items()},
            "batch_spread": {k: s.to_dict() for k, s in self.state.batch_spread.items()},
            "decisions": [{"kind": d.kind, **d.to_dict()} for d in self.decisions[-200:]],
            "failure": str(self.failure) if self.failure else None,
        }
