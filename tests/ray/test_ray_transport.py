"""Scripted workers over the Ray transport decide exactly as over the memory transport."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from distcb.callbacks import Callback, EarlyStopping, LearningRateScheduler, ReduceLROnPlateau
from distcb.protocol.config import Config
from distcb.testing import ScriptedWorker, simulate
from distcb.transport.base import ConnectionClosed
from distcb.transport.ray import RayConnection
from distcb.transport.websocket_connection import WebSocketConnection

pytestmark = pytest.mark.slow
FAST = Config(heartbeat_interval_s=0.05, heartbeat_timeout_s=5.0, stop_timeout_s=5.0)


class StopAtBatch(Callback):
    def __init__(self, epoch, step):
        super().__init__()
        self.at = (epoch, step)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.model.stop_training = True


def scripts(epochs=6, steps=12, workers=3):
    losses = [1.0, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 1.0]
    epoch_logs = [
        [
            {"loss": losses[e] + 0.01 * r, "val_loss": losses[e] + 0.1 + 0.02 * r}
            for r in range(workers)
        ]
        for e in range(epochs)
    ]
    batch_logs = [
        [[{"loss": 2.0 - 0.01 * s + 0.001 * r} for r in range(workers)] for s in range(steps)]
        for _ in range(epochs)
    ]
    return epoch_logs, batch_logs


def make_callbacks():
    return [
        LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1)),
        ReduceLROnPlateau(monitor="val_loss", patience=1, factor=0.5),
        EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True),
        StopAtBatch(4, 5),
    ]


PARAMS = {"learning_rate": 0.1, "directions": {"loss": "min", "val_loss": "min"}}


async def run_over_ray(ray, callbacks, epoch_logs, batch_logs, config, weights, direct=True):
    from distcb.launch.ray_actor import RayCoordinator
    from distcb.transport.ray import connect

    world_size = len(epoch_logs[0])
    name = f"distcb-coordinator-test-{secrets.token_hex(4)}"
    token = secrets.token_hex(8)
    actor = RayCoordinator.options(name=name, num_cpus=0).remote(
        callbacks, world_size=world_size, config=config.to_dict(), token=token
    )
    try:
        run = asyncio.ensure_future(actor.run.remote())
        workers = [
            ScriptedWorker(
                rank=rank,
                world_size=world_size,
                epoch_logs=[row[rank] for row in epoch_logs],
                batch_logs=[[step[rank] for step in epoch] for epoch in batch_logs],
                weights=weights if rank == 0 else None,
                params=dict(PARAMS),
            )
            for rank in range(world_size)
        ]
        connections = [
            await connect(f"ray:{name}", token, config=config, direct=direct) for _ in workers
        ]
        runs = [asyncio.ensure_future(w.run(c)) for w, c in zip(workers, connections, strict=True)]
        outcome = await asyncio.wait_for(run, 60)
        await asyncio.wait_for(asyncio.gather(*runs), 30)
        for connection in connections:
            await connection.close()
        return outcome, workers, connections
    finally:
        ray.kill(actor)


@pytest.mark.parametrize(("window", "direct"), [(None, True), (3, True), (3, False)])
async def test_scripted_run_over_ray_matches_memory_transport(
    ray_cluster, no_leaked_actors, window, direct
):
    config = FAST if window is None else FAST.replace(window_steps=window)
    epoch_logs, batch_logs = scripts()
    weights = [f"w{e}" for e in range(len(epoch_logs))]
    expected = await asyncio.to_thread(
        simulate,
        make_callbacks(),
        epoch_logs,
        batch_logs,
        weights=weights,
        config=config,
        params=PARAMS,
    )
    kinds = {d.kind for d in expected.decisions}
    assert {"set_lr", "snapshot", "restore", "stop"} <= kinds, kinds
    outcome, workers, connections = await run_over_ray(
        ray_cluster, make_callbacks(), epoch_logs, batch_logs, config, weights, direct
    )
    assert outcome["error"] is None
    # The actor returns the decision log: each decision with who made it and when.
    assert all(d["made_by"] and d["time"] > 0 for d in outcome["decisions"])
    made = [
        {k: v for k, v in d.items() if k not in ("made_by", "time")} for d in outcome["decisions"]
    ]
    assert made == [d.to_json() for d in expected.decisions]
    assert outcome["epoch"] == expected.history.epoch
    assert outcome["history"] == expected.history.history
    for got, want in zip(workers, expected.workers, strict=True):
        assert [a.decision for a in got.applied] == [a.decision for a in want.applied]
        assert [(a.epoch, a.step) for a in got.applied] == [(a.epoch, a.step) for a in want.applied]
        assert got.steps_sent == want.steps_sent
        assert got.learning_rates == want.learning_rates
    assert workers[0].current_weights == expected.weights
    if direct:  # a websocket straight to the coordinator actor: no actor call per message
        assert all(isinstance(c, WebSocketConnection) for c in connections)
        return
    # Through actor calls: batch logs travel coalesced, far fewer calls than messages.
    assert all(isinstance(c, RayConnection) for c in connections)
    sent = sum(c.statistics()["messages_sent"] for c in connections)
    calls = sum(c.statistics()["pushes"] + c.statistics()["polls"] for c in connections)
    assert calls < sent


async def test_wrong_token_is_refused(ray_cluster, no_leaked_actors):
    from distcb.launch.ray_actor import RayCoordinator
    from distcb.protocol.errors import ProtocolError
    from distcb.transport.ray import connect

    name = f"distcb-coordinator-test-{secrets.token_hex(4)}"
    actor = RayCoordinator.options(name=name, num_cpus=0).remote(
        [], world_size=1, config=FAST.to_dict(), token="right"
    )
    try:
        with pytest.raises(ProtocolError, match="wrong job token"):
            await connect(f"ray:{name}", "wrong", config=FAST)
    finally:
        ray_cluster.kill(actor)


async def test_dead_coordinator_becomes_connection_closed(ray_cluster, no_leaked_actors):
    from distcb.launch.ray_actor import RayCoordinator
    from distcb.protocol.messages import Heartbeat
    from distcb.transport.ray import connect

    name = f"distcb-coordinator-test-{secrets.token_hex(4)}"
    actor = RayCoordinator.options(name=name, num_cpus=0).remote(
        [], world_size=1, config=FAST.to_dict(), token="t"
    )
    connection = await connect(f"ray:{name}", "t", config=FAST, direct=False)  # actor calls
    ray_cluster.kill(actor)

    async def receive_until_closed():
        for _ in range(100):
            await connection.receive()

    async def send_until_closed():
        for _ in range(100):
            await connection.send(Heartbeat())
            await asyncio.sleep(0.05)

    with pytest.raises(ConnectionClosed, match="Actor|actor"):
        await receive_until_closed()
    with pytest.raises(ConnectionClosed):
        await send_until_closed()
    await connection.close()


async def test_missing_coordinator_times_out(ray_cluster):
    from distcb.transport.ray import connect

    with pytest.raises(ConnectionClosed, match="connect_timeout_s"):
        await connect("ray:distcb-nobody", "t", config=FAST.replace(connect_timeout_s=0.3))
