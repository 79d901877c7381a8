"""Issue 25, item 9: idle connections without the token, reopened as fast as they close,
must not lock workers out: a real `distcb coordinator` subprocess over real sockets."""

from __future__ import annotations

import asyncio
import socket
import threading

import aiohttp

from distcb.protocol.config import Config
from distcb.protocol.messages import Join, JoinParams, decode_from_coordinator
from distcb.testing import ScriptedWorker
from distcb.transport.websocket import connect
from distcb.transport.websocket_connection import WebSocketConnection
from tests.helpers.coordinator_process import CoordinatorProcess

WAIT_S = 30.0
CLIENT = Config(heartbeat_interval_s=0.2, heartbeat_timeout_s=30.0, connect_timeout_s=10.0)


def hold_idle_connections(target, stop: threading.Event, held: list[socket.socket]) -> None:
    """The attacker (from 127.0.0.1): keep opening idle connections, reopening each one the
    server closes, until `stop`."""
    while not stop.is_set():
        try:
            sock = socket.create_connection(target, timeout=1.0)
        except OSError:
            continue
        held.append(sock)
        for old in list(held):  # reopen what the server closed
            old.setblocking(False)
            try:
                if old.recv(4096) == b"":
                    held.remove(old)
                    old.close()
            except BlockingIOError:
                pass
            except OSError:
                held.remove(old)
                old.close()
        stop.wait(0.005)


async def connect_from(address: str, coordinator: CoordinatorProcess, source: str):
    """A worker's connection from another loopback address (another machine)."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    session = aiohttp.ClientSession(connector=connector)
    ws = await session.ws_connect(
        f"ws://{address}/ws", headers={"Authorization": f"Bearer {coordinator.token}"}
    )
    return WebSocketConnection(
        ws,
        "coordinator",
        CLIENT,
        receive_timeout_s=CLIENT.heartbeat_timeout_s,
        decode=decode_from_coordinator,
        drop=session.close,
    )


async def test_idle_connections_from_one_address_do_not_lock_workers_out(tmp_path):
    config = {"max_connections": 48, "handshake_timeout_s": 30.0, "join_timeout_s": 60.0}
    config["max_anonymous_per_address"] = 16
    with CoordinatorProcess(tmp_path, world_size=2, config=config) as coordinator:
        stop = threading.Event()
        held: list[socket.socket] = []
        attacker = threading.Thread(
            target=hold_idle_connections, args=((coordinator.host, coordinator.port), stop, held)
        )
        attacker.start()
        try:
            # The attacker is at its address's limit (it is refused 503 past it) ...
            refused = await asyncio.to_thread(over_the_limit, coordinator)
            # ... and the workers, from other addresses, get in and run the job.
            connections = [
                await connect_from(coordinator.address, coordinator, f"127.0.0.{2 + r}")
                for r in range(2)
            ]
            workers = [ScriptedWorker(r, 2, [{"loss": 1.0}], config=CLIENT) for r in range(2)]
            await asyncio.gather(*(w.run(c) for w, c in zip(workers, connections, strict=True)))
            exit_code, _ = await asyncio.to_thread(coordinator.wait, WAIT_S)
            for connection in connections:
                await connection.close()
        finally:
            stop.set()
            attacker.join()
            for sock in held:
                sock.close()
    assert "Config.max_anonymous_per_address" in refused, refused
    assert exit_code == 0


def over_the_limit(coordinator: CoordinatorProcess) -> str:
    """Open connections from 127.0.0.1 until one is refused; its answer."""
    for _ in range(200):
        sock = socket.create_connection((coordinator.host, coordinator.port))
        sock.settimeout(0.5)
        try:
            answer = sock.recv(4096)
        except TimeoutError:
            answer = b""
        if answer.startswith(b"HTTP/1.1 503"):
            sock.close()
            return answer.decode()
        sock.close()
    raise AssertionError("never refused")


def first_answer(coordinator: CoordinatorProcess, sock: socket.socket) -> bytes:
    """What the server sends first on `sock` within half a second (b"": nothing yet)."""
    sock.settimeout(0.5)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return b""


async def test_joined_workers_do_not_count_against_the_anonymous_pool(tmp_path):
    config = {"max_connections": 2, "handshake_timeout_s": 30.0, "join_timeout_s": 60.0}
    with CoordinatorProcess(tmp_path, world_size=3, config=config) as coordinator:
        joined = [
            await connect_from(coordinator.address, coordinator, f"127.0.0.{2 + r}")
            for r in range(2)
        ]
        for rank, connection in enumerate(joined):
            await connection.send(Join(rank=rank, world_size=3, params=JoinParams(epochs=1)))
        # Two joined workers hold two connections; the pool of 2 is still free for others.
        target = (coordinator.host, coordinator.port)
        idle = [socket.create_connection(target) for _ in range(3)]
        answers = [await asyncio.to_thread(first_answer, coordinator, s) for s in idle]
        for sock in idle:
            sock.close()
        for connection in joined:
            await connection.close()
    assert answers[:2] == [b"", b""], answers  # held, not refused
    assert answers[2].startswith(b"HTTP/1.1 503"), answers
    assert b"Config.max_connections" in answers[2]


async def test_many_workers_from_one_address_get_in_past_its_limit():
    """A burst of workers from one machine (the process backend, a node of `distcb launch`):
    those answered 503 over the address's limit retry until they are in."""
    from distcb.coordinator.engine import Coordinator
    from distcb.server import WebSocketServer

    world_size = 48
    config = Config(max_anonymous_per_address=4, heartbeat_interval_s=0.2, heartbeat_timeout_s=30.0)
    coordinator = Coordinator([], world_size=world_size, config=config)
    async with WebSocketServer(coordinator, config=config) as server:
        job = asyncio.create_task(coordinator.run())
        connections = await asyncio.gather(
            *(connect(server.address, server.token, config=config) for _ in range(world_size))
        )
        workers = [
            ScriptedWorker(r, world_size, [{"loss": 1.0}], config=config) for r in range(world_size)
        ]
        await asyncio.gather(*(w.run(c) for w, c in zip(workers, connections, strict=True)))
        history = await asyncio.wait_for(job, WAIT_S)
        refused = server.statistics()["rejected"]["over_address_limit"]
        for connection in connections:
            await connection.close()
    assert history.history["loss"] == [1.0]
    assert refused > 0  # the limit was hit, and retried past
