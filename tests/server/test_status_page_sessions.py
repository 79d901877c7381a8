"""Issue 25, items 14 and 15: the status page's sign-in sessions and the bounds on its event
streams, over real HTTP against a real server."""

from __future__ import annotations

import asyncio
import logging
import socket

import aiohttp
import pytest

from distcb.coordinator.engine import Coordinator
from distcb.protocol.config import Config
from distcb.server import WebSocketServer
from distcb.server.status_page import COOKIE

TOKEN = "the-job-token-0123456789"
WAIT_S = 30.0


@pytest.fixture
async def server():
    config = Config(status_session_s=3600.0)
    coordinator = Coordinator(world_size=1, config=config)
    async with WebSocketServer(coordinator, token=TOKEN) as running:
        yield running


async def sign_in(base: str) -> str:
    """A fresh sign-in's cookie value."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base}/?token={TOKEN}", allow_redirects=False) as answer,
    ):
        assert answer.status == 303
        return answer.cookies[COOKIE].value


async def status_with(base: str, cookie: str) -> int:
    headers = {"Cookie": f"{COOKIE}={cookie}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base}/status", headers=headers) as answer,
    ):
        return answer.status


async def test_every_sign_in_gets_its_own_session_and_logout_revokes_it(server):
    base = f"http://{server.address}"
    first, second = await sign_in(base), await sign_in(base)
    assert first != second
    assert TOKEN not in first
    assert await status_with(base, first) == 200
    assert await status_with(base, second) == 200
    headers = {"Cookie": f"{COOKIE}={first}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base}/logout", headers=headers, allow_redirects=False) as out,
    ):
        assert out.status == 303
    assert await status_with(base, first) == 401  # a copy of the cookie no longer opens it
    assert await status_with(base, second) == 200  # the other sign-in lives on


async def test_a_session_expires_and_the_cookie_says_when():
    config = Config(status_session_s=0.5)
    coordinator = Coordinator(world_size=1, config=config)
    async with WebSocketServer(coordinator, token=TOKEN) as server:
        base = f"http://{server.address}"
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{base}/?token={TOKEN}", allow_redirects=False) as answer,
        ):
            cookie = answer.cookies[COOKIE]
        assert cookie["max-age"] == "0" or int(cookie["max-age"]) <= 1
        assert await status_with(base, cookie.value) == 200
        await asyncio.sleep(0.6)  # past Config.status_session_s
        assert await status_with(base, cookie.value) == 401


async def test_a_cookie_of_one_job_does_not_open_another_with_the_same_token(server):
    other = WebSocketServer(Coordinator(world_size=1, config=Config()), token=TOKEN)
    async with other:
        cookie = await sign_in(f"http://{server.address}")
        assert await status_with(f"http://{other.address}", cookie) == 401
        assert await status_with(f"http://{server.address}", cookie) == 200


async def test_sign_in_sessions_are_bounded_oldest_first():
    config = Config(max_status_sessions=3)
    async with WebSocketServer(Coordinator(world_size=1, config=config), token=TOKEN) as server:
        base = f"http://{server.address}"
        cookies = [await sign_in(base) for _ in range(4)]
        answers = [await status_with(base, c) for c in cookies]
    assert answers == [401, 200, 200, 200]


async def test_wrong_sign_ins_are_logged_at_most_once_per_interval(server, caplog):
    caplog.set_level(logging.WARNING)
    base = f"http://{server.address}"
    async with aiohttp.ClientSession() as session:
        for i in range(50):
            async with session.post(f"{base}/login", data={"token": f"wrong-{i}"}) as answer:
                assert answer.status == 401
    assert caplog.text.count("rejected a sign-in to the status page") == 1


async def test_a_viewer_that_does_not_read_is_dropped_and_frees_its_stream():
    config = Config(status_write_timeout_s=0.5, max_status_streams=1)
    coordinator = Coordinator(world_size=1, config=config)
    async with WebSocketServer(coordinator, token=TOKEN) as server:
        server._page.interval_s = 0.001  # events as fast as the loop goes: the buffers fill
        host, _, port = server.address.rpartition(":")
        viewer = socket.socket()
        viewer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        viewer.connect((host, int(port)))
        viewer.sendall(
            f"GET /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        try:
            opened = await until(lambda: server._page._streams == 1)
            for transport in list(server._admission.slots):  # a small buffer fills sooner
                transport.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
                )
            # The viewer reads nothing: the server's writes wait, then it gives up on it.
            dropped = await until(
                lambda: server._page._streams == 0 and server.statistics()["connections_open"] == 0
            )
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://{server.address}/events", headers=headers) as stream,
            ):
                status = stream.status
                await stream.content.readline()
        finally:
            viewer.close()
    assert opened
    assert dropped
    assert status == 200  # its slot was free again


async def until(condition) -> bool:
    """Whether `condition()` came true within WAIT_S (polled)."""
    for _ in range(int(WAIT_S / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return False
