"""The websocket transport: real aiohttp servers and clients on 127.0.0.1, scripted workers."""

from __future__ import annotations

import asyncio
import json
import socket

import aiohttp
import msgspec
import pytest
from aiohttp import WSCloseCode, WSMsgType, web

from distcb.callbacks import Callback, LearningRateScheduler
from distcb.coordinator.engine import Coordinator
from distcb.protocol.config import Config
from distcb.protocol.errors import CoordinatorLostError, ProtocolError, WorkerLostError
from distcb.protocol.messages import PROTOCOL_VERSION, EpochEnd, Join, Message
from distcb.testing import ScriptedWorker, asimulate
from distcb.transport.base import Connection, ConnectionClosed
from distcb.transport.websocket import WebSocketConnection, WebSocketServer, connect

FAST = Config(
    heartbeat_interval_s=0.05,
    heartbeat_timeout_s=5.0,
    stop_timeout_s=5.0,
    connect_timeout_s=5.0,
    max_message_bytes=64 * 1024,
)
WAIT_S = 5.0  # bound on any single wait in these tests


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


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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


async def test_scripted_workers_complete_a_run_like_the_memory_transport():
    epoch_logs, batch_logs = scripts()
    params = {"learning_rate": 0.1}

    def callbacks():
        return [Recorder(), LearningRateScheduler(lambda epoch, lr: lr * 0.5)]

    memory = await asimulate(callbacks(), epoch_logs, batch_logs, params, config=FAST)

    ws_callbacks = callbacks()
    coordinator = Coordinator(ws_callbacks, world_size=2, config=FAST)
    workers = [
        ScriptedWorker(
            rank,
            2,
            [row[rank] for row in epoch_logs],
            [[step[rank] for step in epoch] for epoch in batch_logs],
            params=dict(params),
        )
        for rank in range(2)
    ]
    async with WebSocketServer(coordinator) as server:
        running = Workers(server)
        for worker in workers:
            await running.start(worker)
        history = await asyncio.wait_for(coordinator.run(), WAIT_S)
        results = await running.finish()

    assert results == [None, None]
    assert history.history == memory.history.history
    assert history.epoch == memory.history.epoch == [0, 1, 2]
    assert ws_callbacks[0].calls == memory.coordinator.callbacks.callbacks[0].calls
    assert len([c for c in ws_callbacks[0].calls if c[0] == "batch_end"]) == 3 * 4
    assert coordinator.decisions == memory.decisions
    for ws_worker, memory_worker in zip(workers, memory.workers, strict=True):
        assert ws_worker.learning_rates == memory_worker.learning_rates == [0.05, 0.025, 0.0125]


def _join(protocol: int = PROTOCOL_VERSION, world_size: int = 2) -> bytes:
    return msgspec.msgpack.encode(
        {"type": "join", "rank": 1, "world_size": world_size, "protocol": protocol}
    )


# (what the intruder sends, the close code it gets, a phrase of the close reason)
INTRUDERS = {
    "protocol_99": (_join(protocol=99), WSCloseCode.POLICY_VIOLATION, "protocol version 99"),
    "wrong_world_size": (_join(world_size=3), WSCloseCode.OK, "world_size=3"),
    "garbage": (b"\xc1 this is not msgpack", WSCloseCode.POLICY_VIOLATION, "not MessagePack"),
    "text_frame": ('{"type": "heartbeat"}', WSCloseCode.UNSUPPORTED_DATA, "text frame"),
    "oversized": (b"x" * (FAST.max_message_bytes + 1), WSCloseCode.MESSAGE_TOO_BIG, ""),
    "not_a_map": (msgspec.msgpack.encode([1, 2, 3]), WSCloseCode.POLICY_VIOLATION, "a map"),
    "coordinator_message": (
        msgspec.msgpack.encode({"type": "start"}),
        WSCloseCode.POLICY_VIOLATION,
        "a worker sent a message of type 'start'",
    ),
}


async def test_intruders_are_rejected_while_the_job_completes():
    epoch_logs = [{"loss": 1.0}] * 3
    coordinator = Coordinator([], world_size=2, config=FAST)
    async with WebSocketServer(coordinator) as server, aiohttp.ClientSession() as session:
        run = asyncio.create_task(coordinator.run())
        running = Workers(server)
        await running.start(ScriptedWorker(0, 2, epoch_logs))

        for headers in ({}, auth("wrong-token"), {"Authorization": server.token}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await session.ws_connect(server.url, headers=headers)
            assert info.value.status == 401
        with pytest.raises(ProtocolError, match="token rejected"):
            await connect(server.address, "wrong-token", config=FAST)

        for name, (frame, code, phrase) in INTRUDERS.items():
            ws = await session.ws_connect(server.url, headers=auth(server.token))
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
            msg = await ws.receive(timeout=WAIT_S)
            assert msg.type is WSMsgType.CLOSE, name
            assert (msg.data, phrase in msg.extra) == (code, True), (name, msg.extra)
            await ws.close()

        status = coordinator.status()
        assert (status["phase"], status["joined"], status["live"]) == ("joining", [0], [0])
        await running.start(ScriptedWorker(1, 2, epoch_logs))
        history = await asyncio.wait_for(run, WAIT_S)
        assert await running.finish() == [None, None]
    assert history.history["loss"] == [1.0] * 3


async def test_healthz_needs_no_token_and_status_needs_one():
    coordinator = Coordinator([], world_size=2, config=FAST)
    async with WebSocketServer(coordinator) as server, aiohttp.ClientSession() as session:
        base = f"http://{server.address}"
        async with session.get(f"{base}/healthz") as response:
            assert (response.status, await response.json()) == (200, {"ok": True})
        async with session.get(f"{base}/status") as response:
            assert response.status == 401
            assert "Bearer" in (await response.json())["error"]
        async with session.get(f"{base}/status", headers=auth("nope")) as response:
            assert response.status == 401
        coordinator.last_epoch_logs = {"loss": float("nan")}  # strict JSON even then
        async with session.get(f"{base}/status", headers=auth(server.token)) as response:
            assert response.status == 200
            status = json.loads(await response.text())
    assert (status["world_size"], status["epoch"], status["decisions"]) == (2, 0, [])
    assert status["last_epoch_logs"] == {"loss": "NaN"}


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "coordinator.example"])
def test_binding_beyond_loopback_needs_a_token_and_tls_or_insecure(host, caplog):
    coordinator = Coordinator([], world_size=1, config=FAST)
    with pytest.raises(ValueError, match="needs a token"):
        WebSocketServer(coordinator, host=host, insecure=True)
    with pytest.raises(ValueError, match="plaintext: pass ssl="):
        WebSocketServer(coordinator, host=host, token="s3cret")
    # insecure=True constructs (nothing is bound before start()) and says so, once.
    with caplog.at_level("WARNING", logger="distcb.transport.websocket"):
        server = WebSocketServer(coordinator, host=host, token="s3cret", insecure=True)
    assert server.token == "s3cret"
    warnings = [r for r in caplog.records if "without TLS" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_generates_a_token(host):
    server = WebSocketServer(Coordinator([], world_size=1), host=host)
    assert len(server.token) >= 32


@pytest.mark.parametrize("token", ["", "has space", "caf\u00e9"])
def test_unusable_tokens_are_refused(token):
    with pytest.raises(ValueError, match="token must be"):
        WebSocketServer(Coordinator([], world_size=1), token=token)


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


async def test_a_worker_sees_its_coordinator_shut_down():
    coordinator = Coordinator([], world_size=2, config=FAST)
    server = WebSocketServer(coordinator)
    await server.start()
    connection = await connect(server.address, server.token, config=FAST)
    await connection.send(Join(0, 2))
    receiving = asyncio.create_task(connection.receive())
    await server.aclose()
    await server.aclose()  # idempotent
    with pytest.raises(ConnectionClosed, match="shutting down"):
        await asyncio.wait_for(receiving, WAIT_S)
    with pytest.raises(ConnectionClosed):
        await connection.send(Join(0, 2))
    await connection.close()


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
