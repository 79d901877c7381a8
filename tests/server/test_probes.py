"""The coordinator's Kubernetes probes: /readyz (accepting joins), /healthz (alive, even while a
callback blocks for as long as it likes), /status (token only). Real aiohttp server, scripted
workers over websockets."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import pytest

from distcb.callbacks import Callback
from distcb.coordinator.engine import Coordinator
from distcb.protocol.config import Config
from distcb.server import WebSocketServer
from distcb.testing import ScriptedWorker
from distcb.transport.websocket import connect

FAST = Config(
    heartbeat_interval_s=0.05, heartbeat_timeout_s=30.0, stop_timeout_s=5.0, connect_timeout_s=5.0
)
WAIT_S = 10.0
PROBE_TIMEOUT_S = 2.0  # a Kubernetes probe's timeoutSeconds is of this order


class Blocking(Callback):
    """Blocks the coordinator's callback thread at the end of epoch 1 until released."""

    def __init__(self, busy: bool) -> None:
        super().__init__()
        self.busy = busy
        self.entered = threading.Event()
        self.release = threading.Event()

    def on_epoch_end(self, epoch, logs=None):
        if epoch != 1:
            return
        self.entered.set()
        if self.busy:  # pure Python work: holds the GIL except at switch intervals
            while not self.release.is_set():
                sum(range(10_000))
        else:
            self.release.wait(WAIT_S * 3)


async def probe(session: aiohttp.ClientSession, url: str, **kwargs) -> tuple[int, dict]:
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    async with session.get(url, timeout=timeout, **kwargs) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("busy", [False, True], ids=["sleeping", "cpu-busy"])
async def test_probes_answer_while_a_callback_blocks_and_readiness_follows_the_phase(busy):
    blocking = Blocking(busy)
    coordinator = Coordinator([blocking], world_size=2, config=FAST)
    logs = [{"loss": 1.0}, {"loss": 0.5}, {"loss": 0.25}]
    async with WebSocketServer(coordinator) as server, aiohttp.ClientSession() as session:
        base = f"http://{server.address}"
        bearer = {"Authorization": f"Bearer {server.token}"}
        assert await probe(session, f"{base}/readyz") == (200, {"ready": True, "phase": "joining"})
        run = asyncio.create_task(coordinator.run())
        connections = [await connect(server.address, server.token, config=FAST) for _ in range(2)]
        workers = [
            asyncio.create_task(ScriptedWorker(rank, 2, logs).run(connections[rank]))
            for rank in range(2)
        ]
        entered = await asyncio.to_thread(blocking.entered.wait, WAIT_S)
        assert entered, "the callback never ran"
        try:
            # The callback thread is stuck; the event loop must still answer every probe.
            for _ in range(5):
                assert await probe(session, f"{base}/healthz") == (200, {"ok": True})
                assert await probe(session, f"{base}/readyz") == (
                    200,
                    {"ready": True, "phase": "training"},
                )
                status, body = await probe(session, f"{base}/status", headers=bearer)
                assert (status, body["phase"], body["epoch"]) == (200, "training", 1)
        finally:
            blocking.release.set()
        history = await asyncio.wait_for(run, WAIT_S)
        assert await asyncio.wait_for(asyncio.gather(*workers), WAIT_S) == [None, None]
        for connection in connections:
            await connection.close("test over")
        # Done: no longer ready (Kubernetes stops routing to it), still alive.
        assert await probe(session, f"{base}/readyz") == (503, {"ready": False, "phase": "done"})
        assert await probe(session, f"{base}/healthz") == (200, {"ok": True})
    assert history.epoch == [0, 1, 2]


async def test_status_needs_the_token_but_the_probes_do_not():
    coordinator = Coordinator([], world_size=1, config=FAST)
    async with WebSocketServer(
        coordinator, host="0.0.0.0", token="k8s-secret-token", insecure=True
    ) as server:
        port = server.address.rpartition(":")[2]
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k8s"}):
                status, body = await probe(session, f"{base}/status", headers=headers)
                assert status == 401
                assert "Bearer" in body["error"]
            status, body = await probe(
                session, f"{base}/status", headers={"Authorization": "Bearer k8s-secret-token"}
            )
            assert (status, body["world_size"]) == (200, 1)
            assert (await probe(session, f"{base}/healthz"))[0] == 200
            assert (await probe(session, f"{base}/readyz"))[0] == 200
