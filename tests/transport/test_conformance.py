"""The same jobs over every transport: memory (one event loop), inproc (the thread backend's)
and websocket (a real server on loopback), through `distcb.testing.asimulate(transport=...)`.

Each scenario runs the real coordinator and the real worker code; a transport conforms
when the job ends exactly as it does over the memory transport: the same History, the
same decisions at the same steps, the same error naming the same rank. (Ray's transport
runs these paths in tests/ray, with actors: too slow to repeat here.)
"""

from __future__ import annotations

import asyncio
import math

import pytest

from distcb.callbacks import Callback, EarlyStopping, LearningRateScheduler, TerminateOnNaN
from distcb.protocol.config import Config
from distcb.protocol.decisions import StopTraining
from distcb.protocol.errors import WorkerLostError
from distcb.testing import TRANSPORTS, SimulationResult, asimulate

FAST = Config(
    heartbeat_interval_s=0.05,
    heartbeat_timeout_s=5.0,
    stop_timeout_s=5.0,
    connect_timeout_s=5.0,
    max_message_bytes=64 * 1024,
)
WAIT_S = 30.0  # bound on one simulated job


class Recorder(Callback):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple] = []

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("batch_end", batch, dict(logs or {})))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, dict(logs or {})))


def scripts(world_size: int = 2, epochs: int = 3, steps: int = 4):
    """epoch_logs[epoch][rank], batch_logs[epoch][step][rank], as `simulate` takes them."""
    epoch_logs = [
        [{"loss": 1.0 / (e + 1) + r, "val_loss": 2.0 - e * 0.1 + r} for r in range(world_size)]
        for e in range(epochs)
    ]
    batch_logs = [
        [[{"loss": 1.0 + e + s * 0.25 + r} for r in range(world_size)] for s in range(steps)]
        for e in range(epochs)
    ]
    return epoch_logs, batch_logs


async def simulated(transport: str, *args, **kwargs) -> SimulationResult:
    return await asyncio.wait_for(asimulate(*args, transport=transport, **kwargs), WAIT_S)


def applied(result: SimulationResult) -> list[list[tuple[str, int | None]]]:
    """Per worker: (decision type, step it took effect) in the order applied."""
    return [
        [(type(a.decision).__name__, a.step) for a in worker.applied] for worker in result.workers
    ]


@pytest.fixture(params=TRANSPORTS)
def transport(request) -> str:
    return request.param


async def test_batch_hooks_and_a_schedule_end_as_over_memory(transport):
    epoch_logs, batch_logs = scripts()

    def callbacks():
        return [Recorder(), LearningRateScheduler(lambda epoch, lr: lr * 0.5)]

    params = {"learning_rate": 0.1}
    reference = await simulated("memory", callbacks(), epoch_logs, batch_logs, params, config=FAST)
    result = await simulated(transport, callbacks(), epoch_logs, batch_logs, params, config=FAST)

    assert result.history.epoch == [0, 1, 2]
    assert result.history.history == reference.history.history
    recorded = result.coordinator.callbacks.callbacks[0].calls
    assert recorded == reference.coordinator.callbacks.callbacks[0].calls
    assert len([c for c in recorded if c[0] == "batch_end"]) == 3 * 4
    assert result.decisions == reference.decisions
    for worker in result.workers:
        assert worker.learning_rates == [0.05, 0.025, 0.0125]
    assert applied(result) == applied(reference)


async def test_early_stopping_restores_the_same_weights(transport):
    losses = [1.0, 0.5, 0.7, 0.9, 0.8, 0.6]
    epoch_logs = [[{"loss": v, "val_loss": v}, {"loss": v, "val_loss": v}] for v in losses]
    weights = [f"w{e}" for e in range(len(losses))]

    def callbacks():
        return [EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)]

    reference = await simulated("memory", callbacks(), epoch_logs, weights=weights, config=FAST)
    result = await simulated(transport, callbacks(), epoch_logs, weights=weights, config=FAST)

    assert result.stopped_epoch == reference.stopped_epoch == 3
    assert result.weights == "w1"
    assert result.history.history == reference.history.history
    assert result.decisions == reference.decisions
    assert applied(result) == applied(reference)


async def test_a_batch_decision_lands_at_the_same_step_on_every_worker(transport):
    steps = 6
    batch_logs = [
        [[{"loss": math.nan if (e, s) == (1, 2) else 1.0} for _ in range(2)] for s in range(steps)]
        for e in range(3)
    ]
    epoch_logs = [[{"loss": 1.0}, {"loss": 1.0}] for _ in range(3)]
    config = FAST.replace(window_steps=3)
    reference = await simulated("memory", [TerminateOnNaN()], epoch_logs, batch_logs, config=config)
    result = await simulated(transport, [TerminateOnNaN()], epoch_logs, batch_logs, config=config)

    stops = [
        [step for name, step in worker if name == "StopTraining"] for worker in applied(result)
    ]
    assert stops[0] == stops[1]
    assert len(stops[0]) == 1
    assert stops == [
        [step for name, step in worker if name == "StopTraining"] for worker in applied(reference)
    ]
    assert [d for d in result.decisions if isinstance(d, StopTraining)]
    assert result.history.history == reference.history.history


async def test_a_worker_that_drops_is_named_and_its_peer_stops(transport):
    epoch_logs, batch_logs = scripts(epochs=4)
    with pytest.raises(WorkerLostError) as info:
        await simulated(
            transport, [], epoch_logs, batch_logs, config=FAST, disconnect_at={1: (2, 1)}
        )
    assert info.value.rank == 1
    assert "disconnected" in info.value.reason


async def test_a_preempted_worker_restarts_the_job_which_ends_as_uninterrupted(transport, tmp_path):
    epoch_logs, batch_logs = scripts(epochs=5)
    weights = [f"w{e}" for e in range(5)]

    def callbacks():
        return [LearningRateScheduler(lambda epoch, lr: lr * 0.5)]

    uninterrupted = await simulated(
        "memory",
        callbacks(),
        epoch_logs,
        batch_logs,
        {"learning_rate": 0.1},
        weights,
        config=FAST,
    )
    result = await simulated(
        transport,
        callbacks(),
        epoch_logs,
        batch_logs,
        {"learning_rate": 0.1},
        weights,
        config=FAST,
        run_dir=str(tmp_path),
        max_restarts=1,
        preempt_at={0: (2, 1)},
    )

    assert len(result.attempts) == 2
    assert all(w.interrupted for w in result.attempts[0])
    assert result.history.history == uninterrupted.history.history
    assert result.history.epoch == uninterrupted.history.epoch
    assert result.learning_rates[-1] == uninterrupted.learning_rates[-1]
    assert result.weights == uninterrupted.weights == "w4"


def test_an_unknown_transport_is_refused():
    with pytest.raises(ValueError, match="transport must be one of"):
        asyncio.run(asimulate([], [[{"loss": 1.0}]], transport="pigeon"))
