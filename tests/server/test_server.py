"""The coordinator's server (`distcb.server.WebSocketServer`): who it lets in, what it
answers without the token, where it may bind, and how it shuts down; real aiohttp servers
and clients on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import msgspec
import pytest
from aiohttp import WSCloseCode, WSMsgType

from distcb.coordinator.engine import Coordinator
from distcb.protocol.errors import ConnectionClosed, ProtocolError
from distcb.protocol.messages import PROTOCOL_VERSION, Join
from distcb.server import WebSocketServer
from distcb.testing import ScriptedWorker
from distcb.transport.websocket import connect
from tests.transport.test_websocket import FAST, WAIT_S, Workers


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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
    with caplog.at_level("WARNING", logger="distcb.server"):
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
