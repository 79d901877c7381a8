"""The in-process transport between event loops: a coordinator on this loop, scripted workers
each on its own thread and loop (as the thread backend runs them)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from distcb.callbacks import LearningRateScheduler
from distcb.coordinator.engine import Coordinator
from distcb.protocol.config import Config
from distcb.protocol.errors import (
    ConnectionClosed,
    JoinTimeoutError,
    ProtocolError,
    WorkerLostError,
)
from distcb.protocol.messages import Join, JoinParams, Start
from distcb.testing import ScriptedWorker, asimulate
from distcb.transport import connector_for
from distcb.transport.inproc import InProcessListener, connect
from tests.helpers.scripted import Recorder
from tests.transport.test_conformance import scripts

FAST = Config(heartbeat_interval_s=0.05, heartbeat_timeout_s=5.0, stop_timeout_s=5.0)
# No heartbeat wakes a loop during the job: every message must wake its receiver itself.
QUIET = Config(heartbeat_interval_s=30.0, heartbeat_timeout_s=60.0, stop_timeout_s=5.0)
WAIT_S = 10.0


def on_own_loop(coroutine_fn) -> tuple[threading.Thread, list]:
    """Run `coroutine_fn()` with asyncio.run on a new thread; the list gets its outcome."""
    outcome: list = []

    def main() -> None:
        try:
            outcome.append(asyncio.run(coroutine_fn()))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread, outcome


async def test_workers_on_their_own_loops_run_the_job_the_memory_transport_runs():
    epoch_logs, batch_logs = scripts()
    params = {"learning_rate": 0.1}

    def callbacks():
        return [Recorder(), LearningRateScheduler(lambda epoch, lr: lr * 0.5)]

    memory = await asimulate(callbacks(), epoch_logs, batch_logs, params, config=QUIET)

    ours = callbacks()
    coordinator = Coordinator(ours, world_size=2, config=QUIET)
    workers = [
        ScriptedWorker(
            rank,
            2,
            [row[rank] for row in epoch_logs],
            [[step[rank] for step in epoch] for epoch in batch_logs],
            params=dict(params),
            config=QUIET,
        )
        for rank in range(2)
    ]
    async with InProcessListener(coordinator.serve) as listener:
        # The connector a WorkerCallback picks from the address finds this transport.
        open_connection = connector_for(listener.address, listener.token, QUIET)
        running = []
        for worker in workers:

            async def work(worker=worker):
                loop_thread = threading.get_ident()
                await worker.run(await open_connection())
                return loop_thread

            running.append(on_own_loop(work))
        history = await asyncio.wait_for(coordinator.run(), WAIT_S)
        for thread, _ in running:
            await asyncio.to_thread(thread.join, WAIT_S)

    loops = [outcome[0] for _, outcome in running]
    assert len(set(loops)) == 2  # three loops on three threads
    assert threading.get_ident() not in loops
    assert history.history == memory.history.history
    assert history.epoch == [0, 1, 2]
    assert ours[0].calls == memory.coordinator.callbacks.callbacks[0].calls
    assert coordinator.decisions == memory.decisions
    for worker in workers:
        assert worker.learning_rates == [0.05, 0.025, 0.0125]


async def test_a_wrong_token_an_unknown_name_and_a_closed_listener_are_refused():
    coordinator = Coordinator(world_size=1, config=FAST)
    async with InProcessListener(coordinator.serve) as listener:
        with pytest.raises(ProtocolError, match="token rejected"):
            await connect(listener.address, "not-the-token")
        with pytest.raises(ConnectionClosed, match="no in-process coordinator at inproc:nope"):
            await connect("inproc:nope", listener.token)
        with pytest.raises(ValueError, match="'inproc:<name>', received 'tcp:1'"):
            await connect("tcp:1", listener.token)
        address, token = listener.address, listener.token
    with pytest.raises(ConnectionClosed, match="no in-process coordinator"):
        await connect(address, token)


async def test_a_worker_sending_a_coordinator_message_is_dropped_not_the_job():
    # Each end decodes with the other side's decoder, as on a network.
    coordinator = Coordinator(world_size=1, config=FAST.replace(join_timeout_s=1.0))
    async with InProcessListener(coordinator.serve) as listener:

        async def intrude():
            connection = await connect(listener.address, listener.token)
            await connection.send(Start())
            while True:
                try:
                    await connection.receive()
                except ConnectionClosed as closed:
                    return str(closed)

        thread, outcome = on_own_loop(intrude)
        await asyncio.to_thread(thread.join, WAIT_S)
        assert "a worker sent a message of type 'start'" in outcome[0]
        with pytest.raises(JoinTimeoutError):  # the intruder never counted as a worker
            await coordinator.run()


async def test_a_worker_whose_loop_is_gone_is_lost():
    # The worker's thread ends without closing its connection (a crashed thread): the
    # coordinator's next send to it fails, and the rank is named.
    coordinator = Coordinator(world_size=1, config=FAST)
    async with InProcessListener(coordinator.serve) as listener:

        async def join_then_vanish():
            connection = await connect(listener.address, listener.token)
            await connection.send(Join(rank=0, world_size=1, params=JoinParams(epochs=3)))
            # returns: asyncio.run closes this loop, the connection still open

        thread, _ = on_own_loop(join_then_vanish)
        with pytest.raises(WorkerLostError) as lost:
            await asyncio.wait_for(coordinator.run(), WAIT_S)
        await asyncio.to_thread(thread.join, WAIT_S)
    # Noticed at the next send (a heartbeat at the latest), not after a heartbeat timeout.
    assert lost.value.rank == 0
    assert "could not be reached: the in-process worker's event loop is closed" in str(lost.value)
