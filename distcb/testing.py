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
its batch logs (running means, as Keras 3 sends them). The scripted workers run
the same worker code as real ones (`distcb.worker`: the protocol state machine,
the window rule, the batch buffer, decision application) over a real transport
(``transport=``: "memory", the default, one event loop; "inproc", the thread
backend's; "websocket", a real `distcb.server.WebSocketServer` on loopback); only the
model is scripted. They stop consuming their scripts when told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from distcb.callbacks.history import History
from distcb.coordinator.engine import Coordinator
from distcb.coordinator.listener import JobListener
from distcb.protocol.config import Config
from distcb.protocol.decisions import Decision, SaveModel
from distcb.protocol.errors import CoordinatorLostError
from distcb.protocol.logs import Logs
from distcb.protocol.messages import EpochEnd, JoinParams, Preempted, Start
from distcb.transport import connector_for
from distcb.transport.base import Connection
from distcb.transport.inproc import InProcessListener
from distcb.transport.memory import connection_pair
from distcb.worker.apply import AppliedDecision
from distcb.worker.backup import BackupStore
from distcb.worker.protocol import DecisionArrival, StepBegun
from distcb.worker.session import WorkerSession

__all__ = [
    "AppliedDecision",
    "DecisionArrival",
    "ScriptedModel",
    "ScriptedWorker",
    "SimulationResult",
    "StepBegun",
    "asimulate",
    "simulate",
]

DEFAULT_LEARNING_RATE = 0.001
Faults = dict[int, tuple[int, int]] | Sequence[dict[int, tuple[int, int]]]
TRANSPORTS = ("memory", "inproc", "websocket")


@dataclass
class ScriptedModel:
    """The model of a scripted worker: a learning rate, and weights that are any value."""

    learning_rate: float = DEFAULT_LEARNING_RATE
    weights: Any = None
    stop_requested: bool = False
    saves: list[str] = field(default_factory=list)

    def stop_training(self) -> None:
        self.stop_requested = True

    def set_learning_rate(self, value: float) -> None:
        self.learning_rate = value

    def get_weights(self) -> Any:
        return self.weights

    def set_weights(self, weights: Any) -> None:
        self.weights = weights

    def save(
        self,
        filepath: str,
        *,
        weights_only: bool,
        overwrite: bool,
        before_replace: Callable[[str], None] | None = None,
    ) -> None:
        self.saves.append(filepath)  # no file written: nothing to record

    # Backups: the weights (any JSON value) and the learning rate, as JSON files.
    snapshot_suffix = ".json"

    def capture_state(self) -> _ScriptedState:
        # A frozen copy: the writer writes it while the scripted worker goes on.
        return _ScriptedState(
            ScriptedModel(learning_rate=self.learning_rate, weights=copy.deepcopy(self.weights))
        )

    def save_state(self, directory: str) -> None:
        state = {"weights": self.weights, "learning_rate": self.learning_rate}
        with open(os.path.join(directory, "state.json"), "w") as handle:
            json.dump(state, handle)

    def load_state(self, directory: str) -> None:
        with open(os.path.join(directory, "state.json")) as handle:
            state = json.load(handle)
        self.weights = state["weights"]
        self.learning_rate = float(state["learning_rate"])

    def save_snapshot(self, weights: Any, path: str) -> None:
        with open(path, "w") as handle:
            json.dump(weights, handle)

    def load_snapshot(self, path: str) -> Any:
        with open(path) as handle:
            return json.load(handle)


@dataclass(frozen=True)
class _ScriptedState:
    """A scripted model's state as of a barrier (`ScriptedModel.capture_state`)."""

    model: ScriptedModel
    detached: ClassVar[bool] = True

    def write(self, directory: str) -> dict[str, dict[str, Any]]:
        self.model.save_state(directory)
        return {}


@dataclass
class ScriptedWorker:
    """A worker that replays a script of logs instead of training.

    Args:
        rank: its rank. world_size: the number of workers.
        epoch_logs: epoch -> its epoch logs. batch_logs: epoch -> step -> its batch logs.
        params: what it sends on join. weights: epoch -> its weights at that epoch's end.
        samples / val_samples: epoch -> sample counts sent with the epoch logs.
        yields_per_step: how many times it yields to the event loop per step (its speed).
        config: the job's Config (heartbeats, window, frame sizes).
        disconnect_at: ``(epoch, step)`` at which the worker drops its connection, as a
            crashed process would (its `run` then raises ConnectionError).
        preempt_at: ``(epoch, step)`` at which the worker tells the coordinator it got
            SIGTERM (a preempted pod), and goes on until it is stopped.
        run_dir: where its backups go (a resumable job), as `DISTCB_RUN_DIR`.
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
    config: Config = field(default_factory=Config)
    disconnect_at: tuple[int, int] | None = None
    preempt_at: tuple[int, int] | None = None
    run_dir: str | None = None

    model: ScriptedModel = field(init=False)
    session: WorkerSession | None = field(default=None, init=False)
    steps_sent: list[tuple[int, int]] = field(default_factory=list)  # (epoch, step) ended
    learning_rates: list[float] = field(default_factory=list)  # in effect during each epoch
    epochs_run: int = 0
    job_error: str | None = None
    interrupted: bool = False  # it ended so that the job restarts (JobInterrupted)
    resumed_after: int | None = None  # the barrier its job resumed from
    start: Start | None = None  # the go signal it received

    def __post_init__(self) -> None:
        self.model = ScriptedModel(
            learning_rate=float(self.params.get("learning_rate", DEFAULT_LEARNING_RATE))
        )

    # ---------------------------------------------------------------- what tests read

    @property
    def applied(self) -> list[AppliedDecision]:
        return [] if self.session is None else self.session.applier.applied

    @property
    def steps_begun(self) -> list[StepBegun]:
        return [] if self.session is None else list(self.session.protocol.steps_begun or [])

    @property
    def received(self) -> list[DecisionArrival]:
        """Every decision as it arrived, with where the worker was then."""
        return [] if self.session is None else list(self.session.protocol.arrivals or [])

    @property
    def learning_rate(self) -> float:
        return self.model.learning_rate

    @property
    def current_weights(self) -> Any:
        return self.model.weights

    @property
    def saves(self) -> list[SaveModel]:
        """The save decisions this worker carried out (the chief's only)."""
        return [
            a.decision for a in self.applied if isinstance(a.decision, SaveModel) and self.rank == 0
        ]

    @property
    def stopped_by_decision(self) -> bool:
        return self.model.stop_requested

    @property
    def abort_reason(self) -> str | None:
        return None if self.session is None else self.session.protocol.abort_reason

    # ---------------------------------------------------------------- the run

    async def run(self, connection: Connection) -> None:
        async def connect() -> Connection:
            return connection

        store = None
        if self.run_dir is not None:
            store = BackupStore(os.path.join(self.run_dir, "backups"), self.rank, self.rank)
        session = self.session = WorkerSession(
            rank=self.rank,
            world_size=self.world_size,
            connect=connect,
            config=self.config,
            target=self.model,
            store=store,
            record_steps=True,
        )
        initial = int(self.params.get("initial_epoch", 0))
        fields = {k: v for k, v in self.params.items() if k in JoinParams.__struct_fields__}
        fields.setdefault("epochs", initial + len(self.epoch_logs))
        if self.batch_logs is not None and "steps" not in self.params:
            fields["steps"] = max((len(s) for s in self.batch_logs), default=0)
        try:
            start = self.start = await session.open(JoinParams(**fields))
            first = initial
            if start.resume is not None:  # go on after the barrier the job resumes from
                session.applier.resume(start.resume)
                self.resumed_after = start.resume.epoch
                first = start.resume.first_epoch(initial + len(self.epoch_logs))
            await self._train(session, initial, first)
            decisions, self.job_error = await session.end_training()
            session.apply(decisions, -1)
            await session.finish({"learning_rate": self.model.learning_rate})
            self.interrupted = session.protocol.restart
        finally:
            await session.close()

    async def _train(self, session: WorkerSession, initial: int, first: int) -> None:
        for index, logs in enumerate(self.epoch_logs):
            epoch = initial + index
            if epoch < first:
                continue
            session.apply(session.begin_epoch(epoch), -1)
            if self.model.stop_requested:
                return
            self.learning_rates.append(self.model.learning_rate)
            self.epochs_run += 1
            steps = self.batch_logs[index] if self.batch_logs is not None else []
            for step, batch in enumerate(steps):
                if (epoch, step) == self.disconnect_at:
                    # After the backups already taken are durable and reported: when a
                    # backup lands is the writer thread's timing, which a script cannot fix.
                    await session.flush()
                    await session.close()
                    raise ConnectionError(f"rank {self.rank} crashed at epoch {epoch} step {step}")
                if (epoch, step) == self.preempt_at:
                    session.send_nowait(Preempted(rank=self.rank))
                decisions = await session.begin_batch(step)
                session.apply(decisions, step)
                for _ in range(self.yields_per_step):
                    await asyncio.sleep(0)
                session.end_batch(step, dict(batch), None)
                self.steps_sent.append((epoch, step))
                if self.model.stop_requested:
                    break
            if self.weights is not None:
                self.model.weights = self.weights[index]
            decisions = await session.end_epoch(
                EpochEnd(
                    rank=self.rank,
                    epoch=epoch,
                    logs=dict(logs),
                    samples=_at(self.samples, index),
                    val_samples=_at(self.val_samples, index),
                )
            )
            session.apply(decisions, -1)
            if self.model.stop_requested:
                return


@dataclass
class SimulationResult:
    """What a simulated run produced.

    Attributes:
        history: the aggregated History (``.history``, ``.epoch``).
        decisions: every decision in the order the coordinator made them.
        stopped_epoch: the last epoch run when a decision stopped training, else None.
        learning_rates: the learning rate in effect during each epoch run (the chief's).
        weights: the weights the chief ends with (after any restore).
        workers: the scripted workers, for what each applied and when (those of the
            last attempt when the job restarted).
        coordinator: the coordinator (status(), decision log).
        attempts: the workers of every attempt (more than one after a restart).
    """

    history: History
    decisions: list[Decision]
    stopped_epoch: int | None
    learning_rates: list[float]
    weights: Any
    workers: list[ScriptedWorker]
    coordinator: Coordinator
    attempts: list[list[ScriptedWorker]] = field(default_factory=list)


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
    run_dir: str | None = None,
    max_restarts: int = 0,
    resume: bool = False,
    disconnect_at: Faults | None = None,
    preempt_at: Faults | None = None,
    transport: str = "memory",
) -> SimulationResult:
    """`simulate` for code already inside an event loop."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, received {transport!r}")
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
    config = config or Config()
    per_rank_params = (
        list(params) if isinstance(params, Sequence) else [dict(params or {})] * world_size
    )
    resumable = bool(max_restarts or resume)
    coordinator = Coordinator(
        callbacks,
        world_size=world_size,
        config=config,
        stateful_metrics=stateful_metrics,
        state_dir=os.path.join(run_dir, "state") if run_dir and resumable else None,
        max_restarts=max_restarts,
        resume=resume,
    )

    def fault(faults: Faults | None, attempt: int, rank: int) -> tuple[int, int] | None:
        if faults is None:
            return None
        per_attempt = [faults] if isinstance(faults, dict) else list(faults)
        return per_attempt[attempt].get(rank) if attempt < len(per_attempt) else None

    def make_workers(attempt: int) -> list[ScriptedWorker]:
        return [
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
                config=config,
                disconnect_at=fault(disconnect_at, attempt, rank),
                preempt_at=fault(preempt_at, attempt, rank),
                run_dir=run_dir,
            )
            for rank in range(world_size)
        ]

    tasks: list[asyncio.Task[Any]] = []
    attempts: list[list[ScriptedWorker]] = []

    async def work(worker: ScriptedWorker, connect: Callable[[int], Awaitable[Connection]]) -> None:
        await worker.run(await connect(worker.rank))

    async with contextlib.AsyncExitStack() as stack:
        connect = await _serve(transport, coordinator, config, tasks, stack)

        def start(attempt: int) -> None:
            workers = make_workers(attempt)
            attempts.append(workers)
            for worker in workers:
                tasks.append(asyncio.create_task(work(worker, connect)))

        class Restarter(JobListener):
            def restarting(self, attempt: int, failure: BaseException) -> None:
                start(attempt + 1)

        coordinator.add_listener(Restarter())
        start(0)
        try:
            history = await coordinator.run()
        finally:  # the workers end before their server closes, as on a real job
            results = await asyncio.gather(*tasks, return_exceptions=True)
    if len(attempts) == 1:  # with restarts, a fault's own error is expected
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, CoordinatorLostError):
                raise result
    workers = attempts[-1]
    chief = workers[0]
    return SimulationResult(
        history=history,
        decisions=list(coordinator.decisions),
        stopped_epoch=chief.epochs_run - 1 if chief.stopped_by_decision else None,
        learning_rates=list(chief.learning_rates),
        weights=chief.current_weights,
        workers=workers,
        coordinator=coordinator,
        attempts=attempts,
    )


async def _serve(
    transport: str,
    coordinator: Coordinator,
    config: Config,
    tasks: list[asyncio.Task[Any]],
    stack: contextlib.AsyncExitStack,
) -> Callable[[int], Awaitable[Connection]]:
    """Serve `coordinator` over `transport` (closed by `stack`); how a rank's worker connects."""
    if transport == "memory":

        async def pair(rank: int) -> Connection:
            coordinator_end, worker_end = connection_pair(f"scripted worker {rank}")
            tasks.append(asyncio.create_task(coordinator.serve(coordinator_end)))
            return worker_end

        return pair
    if transport == "inproc":
        listener = await stack.enter_async_context(InProcessListener(coordinator.serve))
        address, token = listener.address, listener.token
    else:
        from distcb.server import WebSocketServer  # aiohttp: loaded only for this transport

        server = await stack.enter_async_context(WebSocketServer(coordinator, config=config))
        address, token = server.address, server.token
    open_connection = connector_for(address, token, config)  # as a real worker picks it
    return lambda rank: open_connection()


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
        run_dir: a directory for the journal and the workers' backups (with
            `max_restarts` or `resume`).
        max_restarts, resume: as `distcb.run`'s.
        disconnect_at, preempt_at: rank -> ``(epoch, step)``: that worker crashes (drops
            its connection) or is preempted (says it got SIGTERM) there, in the first
            attempt; or a list of such dicts, one per attempt. Restarted workers replay
            their scripts from where the job resumes.
        transport: "memory" (default), "inproc" or "websocket" (a real server on
            loopback): the same job over each must end the same way.

    Raises:
        RuntimeError: when called inside a running event loop (use `asimulate`).
        ValueError: an unknown transport.
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
