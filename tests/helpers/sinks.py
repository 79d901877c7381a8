"""Helpers shared by the sink tests (real servers, waiting on conditions)."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Received:
    path: str
    content_type: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    """An aiohttp server on 127.0.0.1 that records every request it receives."""

    url: str
    requests: list[Received] = field(default_factory=list)
    arrived: asyncio.Queue = field(default_factory=asyncio.Queue)

    async def wait_requests(self, count: int, timeout_s: float = 5.0) -> list[Received]:
        async with asyncio.timeout(timeout_s):
            while len(self.requests) < count:
                await self.arrived.get()
        return self.requests


RELEASE = web.AppKey("release", asyncio.Event)  # set at teardown: held requests may end

Behaviour = Callable[[int, web.Request], Awaitable[web.StreamResponse]]


async def answer_ok(index: int, request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


async def never_answer(index: int, request: web.Request) -> web.StreamResponse:
    """Accept the request and hold it until the test ends."""
    await request.app[RELEASE].wait()
    return web.Response(text="too late")


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for a condition that another thread or task makes true."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(0.005)
