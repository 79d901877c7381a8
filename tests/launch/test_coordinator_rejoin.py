"""Issue 25, item 10: a rank whose connection drops during the join phase and that connects
again later (its process restarted) takes part; a real `distcb coordinator` subprocess."""

from __future__ import annotations

import asyncio

from distcb.testing import ScriptedWorker
from distcb.transport.websocket import connect
from tests.helpers.coordinator_process import CoordinatorProcess
from tests.launch.test_coordinator_attacks import CLIENT, WAIT_S, join


async def test_a_rank_back_after_several_heartbeats_takes_part(tmp_path):
    config = {"join_timeout_s": 60.0, "heartbeat_interval_s": 0.1, "heartbeat_timeout_s": 1.0}
    with CoordinatorProcess(tmp_path, world_size=2, config=config) as coordinator:
        dropped = await join(coordinator, 0, 2, epochs=1)
        await coordinator_saw_join(coordinator, 0)
        await dropped.abort("the worker's process restarted")
        # Longer than the heartbeat timeout: the coordinator beats (and checks silence)
        # many times while rank 0 is away. Not a timing assertion: any wait over it would do.
        await asyncio.sleep(2.0)
        workers = [ScriptedWorker(r, 2, [{"loss": float(r)}], config=CLIENT) for r in range(2)]
        connections = [
            await connect(coordinator.address, coordinator.token, config=CLIENT) for _ in range(2)
        ]
        results = await asyncio.gather(
            *(w.run(c) for w, c in zip(workers, connections, strict=True))
        )
        exit_code, _ = await asyncio.to_thread(coordinator.wait, WAIT_S)
        for connection in connections:
            await connection.close()
    assert results == [None, None]
    assert exit_code == 0, coordinator.stderr()


async def test_a_rank_that_never_comes_back_is_named_when_the_join_times_out(tmp_path):
    config = {"join_timeout_s": 2.0, "heartbeat_interval_s": 0.1, "heartbeat_timeout_s": 0.5}
    with CoordinatorProcess(tmp_path, world_size=2, config=config) as coordinator:
        dropped = await join(coordinator, 0, 2, epochs=1)
        await coordinator_saw_join(coordinator, 0)
        await dropped.abort("gone for good")
        stays = await join(coordinator, 1, 2, epochs=1)
        exit_code, _ = await asyncio.to_thread(coordinator.wait, WAIT_S)
        await stays.close()
    assert exit_code == 1
    assert "Ranks [0] of world_size=2 did not join within 2 s" in coordinator.stderr()


async def coordinator_saw_join(coordinator: CoordinatorProcess, rank: int) -> None:
    for _ in range(int(WAIT_S / 0.02)):
        if rank in coordinator.status()["joined"]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"rank {rank} never joined")
