"""The status page's sign-in, headers, event stream and bounds, over real HTTP (aiohttp's
client against a real server); tests/server/test_status_page_browser.py drives it in a
browser."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest

from distcb.coordinator.engine import Coordinator
from distcb.protocol.config import Config
from distcb.server import WebSocketServer
from distcb.server.status_page import COOKIE

CONFIG = Config(heartbeat_interval_s=0.2, heartbeat_timeout_s=5.0)
TOKEN = "the-job-token-0123456789"


@pytest.fixture
async def server():
    coordinator = Coordinator(world_size=1, config=CONFIG)
    async with WebSocketServer(coordinator, token=TOKEN) as running:
        yield running


def jar_session() -> aiohttp.ClientSession:
    # Cookies for 127.0.0.1 (an IP address) need an unsafe jar.
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=10)
    )


async def test_the_token_in_the_address_signs_in_and_leaves_it(server, caplog):
    caplog.set_level(logging.DEBUG)
    base = f"http://{server.address}"
    async with jar_session() as session:
        async with session.get(f"{base}/?token={TOKEN}", allow_redirects=False) as answer:
            assert answer.status == 303
            assert answer.headers["Location"] == "/"
            cookie = answer.cookies[COOKIE]
            assert cookie["httponly"]
            assert cookie["samesite"] == "Strict"
            assert TOKEN not in cookie.value  # an HMAC of it, not the token
        async with session.get(f"{base}/") as page:
            assert page.status == 200
            text = await page.text()
            assert 'id="workers"' in text
            assert "script-src 'self'" in page.headers["Content-Security-Policy"]
            assert page.headers["Referrer-Policy"] == "no-referrer"
        async with session.get(f"{base}/status") as status:  # the cookie opens /status
            assert status.status == 200
            assert (await status.json())["world_size"] == 1
        async with session.get(f"{base}/logout") as out:
            assert out.status == 401  # redirected to the login form, signed out
    assert TOKEN not in caplog.text


async def test_the_login_form_and_a_wrong_token(server, caplog):
    caplog.set_level(logging.DEBUG)
    base = f"http://{server.address}"
    async with jar_session() as session:
        async with session.get(f"{base}/?token=not-{TOKEN}") as wrong:
            assert wrong.status == 401
            text = await wrong.text()
            assert "Wrong token" in text
            assert 'id="workers"' not in text
        async with session.post(f"{base}/login", data={"token": "nope"}) as refused:
            assert refused.status == 401
        for path in ("/status", "/events"):
            async with session.get(base + path) as closed:
                assert closed.status == 401
        async with session.post(f"{base}/login", data={"token": TOKEN}) as signed_in:
            assert signed_in.status == 200  # after the redirect: the page
            assert 'id="workers"' in await signed_in.text()
    assert "rejected a sign-in to the status page (GET /)" in caplog.text
    assert f"not-{TOKEN}" not in caplog.text  # the query string is never logged


async def test_the_cookie_does_not_open_the_workers_channel(server):
    base = f"http://{server.address}"
    async with jar_session() as session:
        async with session.get(f"{base}/?token={TOKEN}"):
            pass
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"ws://{server.address}/ws")
        assert refused.value.status == 401


async def test_static_files_are_a_fixed_list(server):
    base = f"http://{server.address}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/static/status.js") as script:
            assert script.status == 200
            assert script.content_type == "text/javascript"
            assert "EventSource" in await script.text()
        for name in ("login.html", "..%2Fstatus_page.py", "missing.js"):
            async with session.get(f"{base}/static/{name}") as missing:
                assert missing.status == 404


async def test_the_event_stream_sends_the_status_and_says_bye_when_the_server_closes():
    coordinator = Coordinator(world_size=1, config=CONFIG)
    server = WebSocketServer(coordinator, token=TOKEN)
    await server.start()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    events: list[tuple[str, str]] = []
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.get(f"http://{server.address}/events", headers=headers) as stream,
    ):
        assert stream.headers["Content-Type"] == "text/event-stream"
        event = None
        async for raw in stream.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((event, line[len("data: ") :]))
                if len(events) == 1:
                    await server.aclose()
    assert [e for e, _ in events] == ["status", "status", "bye"]
    assert json.loads(events[0][1])["phase"] == "joining"
    assert "epoch_spread_history" in json.loads(events[0][1])


async def test_event_streams_are_bounded(server):
    server._page.max_streams = 2
    headers = {"Authorization": f"Bearer {TOKEN}"}
    url = f"http://{server.address}/events"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        first = await session.get(url, headers=headers)
        second = await session.get(url, headers=headers)
        try:
            await first.content.readline()
            await second.content.readline()
            async with session.get(url, headers=headers) as third:
                assert third.status == 503
                assert "2 status streams are open already" in (await third.json())["error"]
        finally:
            first.close()
            second.close()
    await asyncio.sleep(0)
