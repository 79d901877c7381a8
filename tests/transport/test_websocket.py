"""The websocket transport: real aiohttp servers and clients on 127.0.0.1, scripted workers."""

from __future__ import annotations

import asyncio
import socket

import msgspec
import pytest
from aiohttp import WSCloseCode, web

from distcb.coordinator.engine import Coordinator
from distcb.protocol.config import Config
from distcb.protocol.errors import CoordinatorLostError, ProtocolError, WorkerLostError
from distcb.protocol.messages import EpochEnd, Join, Message
from distcb.server import WebSocketServer
from distcb.testing import ScriptedWorker
from distcb.transport.base import Connection, ConnectionClosed
from distcb.transport.websocket import WebSocketConnection, connect

FAST = Config(
    heartbeat_interval_s=0.05,
    heartbeat_timeout_s=5.0,
    stop_timeout_s=5.0,
    connect_timeout_s=5.0,
    max_message_bytes=64 * 1024,
)
WAIT_S = 5.0  # bound on any single wait in these tests


class Workers:
    """Scripted workers connected over websockets; `finish` awaits them and closes their ends."""

    def __init__(self, server: WebSocketServer):
        self.server = server
        self.tasks: list[asyncio.Task[None]] = []
        self.connections: list[Connection] = []

    async def start(self, worker: ScriptedWorker, wrap=lambda conn: conn) -> None:
        connection = wrap(await connect(self.server.address, self.server.token, config=FAST))
        self.connections.append(connection)
        self.tasks.append(asyncio.create_task(worker.run(connection)))

    async def finish(self) -> list[object]:
        gathered = asyncio.gather(*self.tasks, return_exceptions=True)
        results = await asyncio.wait_for(gathered, WAIT_S)
        for connection in self.connections:
            await connection.close("test over")
        return results


async def test_connect_to_a_closed_port_fails_within_connect_timeout():
    async with WebSocketServer(Coordinator([], world_size=1, config=FAST)) as server:
        address = server.address
    config = FAST.replace(connect_timeout_s=0.5)
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(ConnectionClosed, match="connect_timeout_s") as info:
        await connect(address, "token", config=config)
    assert loop.time() - began < 0.5 + 1.0
    assert address in str(info.value)
    assert "refused" in str(info.value).lower()


async def test_a_worker_started_before_the_coordinator_connects_once_it_listens():
    with socket.socket() as probe:  # a free port, closed again: refused until the server binds
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    coordinator = Coordinator([], world_size=1, config=FAST)
    server = WebSocketServer(coordinator, port=port, token="job-token")
    pending = asyncio.create_task(connect(f"ws://127.0.0.1:{port}", "job-token", config=FAST))
    async with server:
        connection = await asyncio.wait_for(pending, WAIT_S)
        task = asyncio.create_task(ScriptedWorker(0, 1, [{"loss": 2.0}]).run(connection))
        history = await asyncio.wait_for(coordinator.run(), WAIT_S)
        assert await asyncio.wait_for(task, WAIT_S) is None
        await connection.close()
    assert history.history["loss"] == [2.0]


class DropAtEpochEnd:
    """A connection that passes messages through until the worker ends `epoch`, then drops."""

    def __init__(self, inner: WebSocketConnection, epoch: int, how: str):
        self.inner, self.epoch, self.how = inner, epoch, how

    @property
    def peer(self) -> str:
        return self.inner.peer

    async def send(self, message: Message) -> None:
        if isinstance(message, EpochEnd) and message.epoch == self.epoch:
            if self.how == "abort":
                await self.inner.abort("the worker crashed")
            else:
                await self.inner.close("the worker crashed")
            raise ConnectionClosed("dropped by the test")
        await self.inner.send(message)

    async def receive(self) -> Message:
        return await self.inner.receive()

    async def close(self, reason: str = "") -> None:
        await self.inner.close(reason)


@pytest.mark.parametrize("how", ["abort", "close"])
async def test_a_worker_that_drops_mid_run_is_named_in_worker_lost_error(how):
    epoch_logs = [{"loss": 1.0}] * 4
    coordinator = Coordinator([], world_size=2, config=FAST)
    async with WebSocketServer(coordinator) as server:
        running = Workers(server)
        await running.start(ScriptedWorker(0, 2, epoch_logs))
        await running.start(ScriptedWorker(1, 2, epoch_logs), lambda c: DropAtEpochEnd(c, 1, how))
        assert isinstance(running.connections[1], Connection)
        with pytest.raises(WorkerLostError) as info:
            await asyncio.wait_for(coordinator.run(), WAIT_S)
        results = await running.finish()
    assert info.value.rank == 1
    assert "disconnected" in info.value.reason
    expected = {"abort": "without a closing handshake", "close": "the worker crashed"}[how]
    assert expected in info.value.reason
    assert results[0] is None  # the survivor was stopped and ended cleanly
    assert isinstance(results[1], CoordinatorLostError)
    assert coordinator.history.epoch == [0, 1]


async def test_a_silent_coordinator_counts_as_lost_after_heartbeat_timeout():
    config = FAST.replace(heartbeat_interval_s=0.02, heartbeat_timeout_s=0.2)
    coordinator = Coordinator([], world_size=2, config=config)  # never run: no heartbeats
    async with WebSocketServer(coordinator) as server:
        connection = await connect(server.address, server.token, config=config)
        await connection.send(Join(0, 2))
        with pytest.raises(ConnectionClosed, match="heartbeat_timeout_s"):
            await asyncio.wait_for(connection.receive(), WAIT_S)


async def test_an_oversized_send_fails_here_with_a_clear_error():
    async with WebSocketServer(Coordinator([], world_size=1, config=FAST)) as server:
        connection = await connect(server.address, server.token, config=FAST)
        big = Join(0, 1, params={"metrics": ["m" * 100] * 1000})
        with pytest.raises(ProtocolError, match="max_message_bytes"):
            await connection.send(big)
        await connection.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("a text frame", WSCloseCode.UNSUPPORTED_DATA),
        (
            msgspec.msgpack.encode({"type": "start", "worker_requests": [{"kind": "x"}]}),
            WSCloseCode.POLICY_VIOLATION,
        ),
        (
            msgspec.msgpack.encode(
                {"type": "progress", "epoch": 0, "processed_step": 0, "decisions": [{"kind": [1]}]}
            ),
            WSCloseCode.POLICY_VIOLATION,
        ),
    ],
)
async def test_a_bad_frame_from_the_coordinator_closes_the_worker_connection(frame, code):
    closed: asyncio.Future[tuple[int | None, str]] = asyncio.get_running_loop().create_future()

    async def bad_coordinator(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_str(frame)
        msg = await ws.receive(timeout=WAIT_S)
        closed.set_result((msg.data, msg.extra))
        return ws

    app = web.Application()
    app.router.add_get("/ws", bad_coordinator)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        connection = await connect(f"127.0.0.1:{port}", "any", config=FAST)
        with pytest.raises(ProtocolError, match="coordinator sent"):
            await connection.receive()
        assert connection.closed
        close_code, reason = await asyncio.wait_for(closed, WAIT_S)
        assert close_code == code
        assert reason
        with pytest.raises(ConnectionClosed):
            await connection.receive()
    finally:
        await runner.cleanup()
