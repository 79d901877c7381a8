"""Real components for the output-sink tests: HTTP servers on loopback, a tiny Keras model."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import asyncio
import socket

import pytest
from aiohttp import web

from tests.helpers.sinks import RELEASE, Behaviour, Received, Server, answer_ok


@pytest.fixture
async def http_server():
    """Start servers whose answer to the n-th request (0-based) is `behaviour(n, request)`."""
    runners: list[web.AppRunner] = []
    release = asyncio.Event()  # lets never-answering handlers return at teardown

    async def start(behaviour: Behaviour = answer_ok) -> Server:
        server = Server(url="")

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            index = len(server.requests)
            server.requests.append(
                Received(request.path, request.content_type, dict(request.headers), body)
            )
            server.arrived.put_nowait(index)
            return await behaviour(index, request)

        app = web.Application()
        app[RELEASE] = release
        app.router.add_post("/{tail:.*}", handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        server.url = f"http://127.0.0.1:{port}"
        return server

    yield start
    release.set()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def closed_port_url() -> str:
    """The URL of a port on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def keras_model():
    """A real, tiny, compiled Keras 3 model (for set_model and the learning rate)."""
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss="mse")
    return model
