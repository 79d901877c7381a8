"""Scripted workers: the real worker code (`distcb.worker`: the protocol state machine, the
window rule, the batch buffer, decision application) driven by a script of logs instead of
a model that trains."""

from __future__ import annotations

import asyncio
import copy
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from distcb.protocol.config import Config
from distcb.protocol.decisions import SaveModel
from distcb.protocol.logs import Logs
from distcb.protocol.messages import EpochEnd, JoinParams, Preempted, Start
from distcb.transport.base import Connection
from distcb.worker.apply import AppliedDecision
from distcb.worker.backup import BackupStore
from distcb.worker.protocol import DecisionArrival, StepBegun
from distcb.worker.session import WorkerSession

__all__ = ["DEFAULT_LEARNING_RATE", "ScriptedModel", "ScriptedWorker"]

DEFAULT_LEARNING_RATE = 0.001


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


def _at(values: Sequence[float | None] | None, index: int) -> float | None:
    if values is None or index >= len(values):
        return None
    value = values[index]
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
