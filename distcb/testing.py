"""Drive a real Coordinator with scripted workers, to test coordinator callbacks.

    from distcb.testing import simulate
    from distcb.callbacks import EarlyStopping

    result = simulate(
        [EarlyStopping(monitor="val_loss", patience=1, restore_best_weights=True)],
        epoch_logs=[[{"loss": 1.0, "val_loss": 0.9}], [{"loss": 0.8, "val_loss": 1.1}], ...],
        weights=["w0", "w1", ...],
    )
    assert result.stopped_epoch == 2 and result.weights == "w0"

`epoch_logs[epoch][rank]` is that worker's epoch logs; `batch_logs[epoch][step][rank]`
its batch logs (running means, as Keras 3 sends them). Workers speak the real
protocol over the in-process transport, obey the window rule and apply every
decision at its effect point, and stop consuming their scripts when told to stop.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from distcb.callbacks.history import History
from distcb.core.config import Config
from distcb.core.coordinator import Coordinator
from distcb.core.decisions import (
    Decision,
    PendingDecisions,
    ReleaseWeights,
    RestoreWeights,
    SaveModel,
    SetLearningRate,
    SnapshotWeights,
    StopTraining,
)
from distcb.core.errors import CoordinatorLostError
from distcb.core.messages import (
    Abort,
    BatchEntry,
    BatchFrame,
    Done,
    EpochEnd,
    EpochReply,
    Heartbeat,
    Join,
    Logs,
    Progress,
    Saved,
    Start,
    TrainEnd,
    TrainEndReply,
)
from distcb.core.transport import Connection, ConnectionClosed
from distcb.transport.memory import connection_pair

__all__ = ["AppliedDecision", "ScriptedWorker", "SimulationResult", "asimulate", "simulate"]

DEFAULT_LEARNING_RATE = 0.001


@dataclass(frozen=True)
class AppliedDecision:
    """A decision as one worker applied it: where it was in training at that moment."""

    decision: Decision
    epoch: int
    step: int  # the step about to begin (batch decisions), -1 between epochs
    max_step_begun: int  # the highest step of `epoch` this worker had begun when it applied it


@dataclass
class ScriptedWorker:
    """A worker that replays a script of logs instead of training.

    Args:
        rank: its rank. world_size: the number of workers.
        epoch_logs: epoch -> its epoch logs. batch_logs: epoch -> step -> its batch logs.
        params: what it sends on join. weights: epoch -> its weights at that epoch's end.
        samples / val_samples: epoch -> sample counts sent with the epoch logs.
        yields_per_step: how many times it yields to the event loop per step (its speed).
    """

    rank: int
    world_size: int
    epoch_logs: Sequence[Logs]
    batch_logs: Sequence[Sequence[Logs]] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    weights: Sequence[Any] | None = None
    samples: Sequence[float | None] | None = None
    val_samples: Sequence[float | None] | None = None
    yields_per_step: int = 1
    frame_steps: int = 1

    learning_rate: float = DEFAULT_LEARNING_RATE
    current_weights: Any = None
    snapshots: dict[int, Any] = field(default_factory=dict)
    applied: list[AppliedDecision] = field(default_factory=list)
    received: list[AppliedDecision] = field(default_factory=list)  # on arrival, before applying
    steps_sent: list[tuple[int, int]] = field(default_factory=list)  # (epoch, step) sent
    learning_rates: list[float] = field(default_factory=list)  # in effect during each epoch run
    saves: list[SaveModel] = field(default_factory=list)
    epochs_run: int = 0
    stopped_by_decision: bool = False
    abort_reason: str | None = None

    def __post_init__(self) -> None:
        self.learning_rate = float(self.params.get("learning_rate", DEFAULT_LEARNING_RATE))
        self._pending = PendingDecisions()
        self._processed_known = -1
        self._progress_epoch = 0
        self._window: int | None = None
        self._stop = False
        self._max_step_begun = -1
        self._epoch = 0
        self._inbox_changed = asyncio.Event()
        self._replies: dict[str, Any] = {}

    # ---------------------------------------------------------------- protocol

    async def run(self, connection: Connection) -> None:
        self._connection = connection
        first = int(self.params.get("initial_epoch", 0))
        params = {"epochs": first + len(self.epoch_logs), **self.params}
        if self.batch_logs is not None and "steps" not in params:
            params["steps"] = max((len(s) for s in self.batch_logs), default=0)
        await connection.send(Join(self.rank, self.world_size, params))
        reader = asyncio.create_task(self._read(), name=f"scripted-worker-{self.rank}-reader")
        try:
            start = await self._wait_reply("start")
            assert isinstance(start, Start)
            self._window = start.window_steps
            self._pending.add(list(start.decisions))
            await self._train()
            await connection.send(TrainEnd(self.rank))
            reply = await self._wait_reply("train_end_reply")
            self._apply(self._pending.take_train_end() + list(reply.decisions), -1)
            await connection.send(Done(self.rank, {"learning_rate": self.learning_rate}))
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _train(self) -> None:
        first = int(self.params.get("initial_epoch", 0))  # a resumed fit
        for index, logs in enumerate(self.epoch_logs):
            epoch = first + index
            self._epoch = epoch
            self._max_step_begun = -1
            self._apply(self._pending.take_epoch_begin(epoch), -1)
            if self._stop:
                return
            self.learning_rates.append(self.learning_rate)
            self.epochs_run += 1
            steps = self.batch_logs[index] if self.batch_logs is not None else []
            entries: list[BatchEntry] = []
            for step, batch in enumerate(steps):
                await self._wait_window(epoch, step)
                self._max_step_begun = step
                self._apply(self._pending.take_batch_begin(epoch, step), step)
                for _ in range(self.yields_per_step):
                    await asyncio.sleep(0)
                entries.append(BatchEntry(step, dict(batch), samples=None))
                self.steps_sent.append((epoch, step))
                if len(entries) >= self.frame_steps:
                    await self._connection.send(BatchFrame(self.rank, epoch, tuple(entries)))
                    entries = []
                if self._stop:
                    break
            if entries:
                await self._connection.send(BatchFrame(self.rank, epoch, tuple(entries)))
            if self.weights is not None:
                self.current_weights = self.weights[index]
            await self._connection.send(
                EpochEnd(
                    self.rank,
                    epoch,
                    dict(logs),
                    samples=_at(self.samples, index),
                    val_samples=_at(self.val_samples, index),
                )
            )
            reply = await self._wait_reply(f"epoch_reply:{epoch}")
            self._pending.add(list(reply.decisions))
            self._apply(self._pending.take_epoch_end(epoch), -1)
            if self._stop:
                return

    async def _wait_window(self, epoch: int, step: int) -> None:
        while (
            self._window is not None
            and not self._stop
            and step > self._known_processed(epoch) + self._window
        ):
            self._inbox_changed.clear()
            await self._inbox_changed.wait()

    def _known_processed(self, epoch: int) -> int:
        return self._processed_known if self._progress_epoch == epoch else -1

    async def _read(self) -> None:
        try:
            while True:
                message = await self._connection.receive()
                for decision in getattr(message, "decisions", ()):
                    self.received.append(
                        AppliedDecision(decision, self._epoch, -1, self._max_step_begun)
                    )
                if isinstance(message, Progress):
                    self._pending.add(list(message.decisions))
                    self._progress_epoch = message.epoch
                    self._processed_known = message.processed_step
                elif isinstance(message, Abort):
                    self.abort_reason = message.reason
                    self._pending.add(list(message.decisions))
                elif isinstance(message, EpochReply):
                    self._replies[f"epoch_reply:{message.epoch}"] = message
                elif isinstance(message, Start | TrainEndReply):
                    self._replies[message.type] = message
                elif isinstance(message, Heartbeat):
                    continue
                self._inbox_changed.set()
        except ConnectionClosed as exc:
            self._replies["closed"] = exc
            self._inbox_changed.set()

    async def _wait_reply(self, key: str) -> Any:
        while key not in self._replies:
            if "closed" in self._replies:
                raise CoordinatorLostError(
                    f"rank {self.rank}: the coordinator closed the connection while this worker "
                    f"waited for {key!r} ({self._replies['closed']})"
                )
            self._inbox_changed.clear()
            await self._inbox_changed.wait()
        return self._replies.pop(key)

    def _apply(self, decisions: list[Decision], step: int) -> None:
        for decision in decisions:
            self.applied.append(AppliedDecision(decision, self._epoch, step, self._max_step_begun))
            if isinstance(decision, StopTraining):
                self._stop = True
                self.stopped_by_decision = True
            elif isinstance(decision, SetLearningRate):
                self.learning_rate = decision.learning_rate
            elif isinstance(decision, SnapshotWeights):
                self.snapshots[decision.snapshot_id] = self.current_weights
            elif isinstance(decision, RestoreWeights):
                self.current_weights = self.snapshots[decision.snapshot_id]
            elif isinstance(decision, ReleaseWeights):
                self.snapshots.pop(decision.snapshot_id, None)
            elif isinstance(decision, SaveModel) and self.rank == 0:
                self.saves.append(decision)
                asyncio.get_running_loop().create_task(
                    self._connection.send(Saved(self.rank, decision.filepath))
                ).add_done_callback(lambda t: t.exception())


@dataclass
class SimulationResult:
    """What a simulated run produced.

    Attributes:
        history: the aggregated History (``.history``, ``.epoch``).
        decisions: every decision in the order the coordinator made them.
        stopped_epoch: the last epoch run when a decision stopped training, else None.
        learning_rates: the learning rate in effect during each epoch run (the chief's).
        weights: the weights the chief ends with (after any restore).
        workers: the scripted workers, for what each applied and when.
        coordinator: the coordinator (status(), saved files).
    """

    history: History
    decisions: list[Decision]
    stopped_epoch: int | None
    learning_rates: list[float]
    weights: Any
    workers: list[ScriptedWorker]
    coordinator: Coordinator


async def asimulate(
    callbacks: Sequence[Any],
    epoch_logs: Sequence[Sequence[Logs]],
    batch_logs: Sequence[Sequence[Sequence[Logs]]] | None = None,
    params: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    weights: Sequence[Any] | None = None,
    *,
    samples: Sequence[Sequence[float | None]] | None = None,
    val_samples: Sequence[Sequence[float | None]] | None = None,
    config: Config | None = None,
    stateful_metrics: Sequence[str] = (),
    yields_per_step: Sequence[int] | None = None,
) -> SimulationResult:
    """`simulate` for code already inside an event loop."""
    if not epoch_logs or not epoch_logs[0]:
        raise ValueError("epoch_logs must hold at least one epoch with at least one worker's logs")
    world_size = len(epoch_logs[0])
    for epoch, row in enumerate(epoch_logs):
        if len(row) != world_size:
            raise ValueError(
                f"epoch_logs[{epoch}] has logs for {len(row)} workers, "
                f"epoch_logs[0] for {world_size}"
            )
    if batch_logs is not None and len(batch_logs) != len(epoch_logs):
        raise ValueError(
            f"batch_logs covers {len(batch_logs)} epochs, epoch_logs {len(epoch_logs)}"
        )
    per_rank_params = (
        list(params) if isinstance(params, Sequence) else [dict(params or {})] * world_size
    )
    coordinator = Coordinator(
        callbacks, world_size=world_size, config=config, stateful_metrics=stateful_metrics
    )
    workers = []
    for rank in range(world_size):
        workers.append(
            ScriptedWorker(
                rank=rank,
                world_size=world_size,
                epoch_logs=[row[rank] for row in epoch_logs],
                batch_logs=None
                if batch_logs is None
                else [[step[rank] for step in epoch] for epoch in batch_logs],
                params=dict(per_rank_params[rank]),
                weights=weights if rank == 0 else None,
                samples=None if samples is None else [row[rank] for row in samples],
                val_samples=None if val_samples is None else [row[rank] for row in val_samples],
                yields_per_step=1 if yields_per_step is None else yields_per_step[rank],
            )
        )
    tasks = []
    for worker in workers:
        coordinator_end, worker_end = connection_pair(f"scripted worker {worker.rank}")
        tasks.append(asyncio.create_task(coordinator.serve(coordinator_end)))
        tasks.append(asyncio.create_task(worker.run(worker_end)))
    try:
        history = await coordinator.run()
    finally:
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, CoordinatorLostError):
            raise result
    chief = workers[0]
    return SimulationResult(
        history=history,
        decisions=list(coordinator.decisions),
        stopped_epoch=chief.epochs_run - 1 if chief.stopped_by_decision else None,
        learning_rates=list(chief.learning_rates),
        weights=chief.current_weights,
        workers=workers,
        coordinator=coordinator,
    )


def simulate(
    callbacks: Sequence[Any],
    epoch_logs: Sequence[Sequence[Logs]],
    batch_logs: Sequence[Sequence[Sequence[Logs]]] | None = None,
    params: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
    weights: Sequence[Any] | None = None,
    **kwargs: Any,
) -> SimulationResult:
    """Run `callbacks` on a real Coordinator fed by scripted workers; see the module docstring.

    Args:
        callbacks: the coordinator callbacks under test.
        epoch_logs: ``epoch_logs[epoch][rank]``, each worker's epoch logs.
        batch_logs: ``batch_logs[epoch][step][rank]``, optional batch logs.
        params: what every worker sends on join (``learning_rate``, ``directions``,
            ``steps``, ``samples``...), or one dict per rank.
        weights: ``weights[epoch]``, the chief's weights at the end of that epoch.
        samples, val_samples: ``[epoch][rank]`` sample counts sent with epoch logs.
        config: a `Config`; stateful_metrics: names taken from the chief.
        yields_per_step: per rank, how often it yields per step (makes workers uneven).

    Raises:
        RuntimeError: when called inside a running event loop (use `asimulate`).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(asimulate(callbacks, epoch_logs, batch_logs, params, weights, **kwargs))
    raise RuntimeError("simulate() cannot run inside an event loop; await asimulate(...) instead")


def _at(values: Sequence[float | None] | None, index: int) -> float | None:
    if values is None or index >= len(values):
        return None
    value = values[index]
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
