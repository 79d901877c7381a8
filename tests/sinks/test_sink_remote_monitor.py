"""RemoteMonitor against real aiohttp servers: wire format, failures, and never blocking."""

import asyncio
import json
import math
import time
import urllib.parse

import numpy as np
import pytest
from aiohttp import web

from distcb.callbacks.remote_monitor import RemoteMonitor, RemoteMonitorStatistics
from distcb.coordinator.runtime import JobState, Runtime
from distcb.protocol.config import Config
from tests.helpers.sinks import never_answer, wait_until

HOOK_BOUND_S = 0.5  # generous: a hook only encodes and hands over; it never waits on the network
LOGGER = "distcb.callbacks.remote_monitor"

LOGS = {
    "loss": np.float32(0.25),
    "accuracy": np.float64(0.75),
    "count": 3,
    "learning_rate": np.array(0.01, dtype=np.float32),
    "one": np.arange(1),  # a one-element array goes out as its value
    "name": "run-1",
}


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


async def run_hooks(callback, epochs_logs, *, end: bool = True) -> list[float]:
    """Drive the hooks on a separate thread, as the coordinator's callback thread does."""

    def drive() -> list[float]:
        durations = []
        callback.on_train_begin()
        for epoch, logs in enumerate(epochs_logs):
            start = time.perf_counter()
            callback.on_epoch_end(epoch, logs)
            durations.append(time.perf_counter() - start)
        if end:
            callback.on_train_end()
        return durations

    return await asyncio.to_thread(drive)


def runtime_here() -> Runtime:
    return Runtime(asyncio.get_running_loop(), Config(), JobState(num_workers=1))


@pytest.mark.parametrize("send_as_json", [False, True])
async def test_payload_is_what_keras_sends(http_server, send_as_json):
    server = await http_server()
    import keras

    headers = {"X-Run": "abc"}
    keras_monitor = keras.callbacks.RemoteMonitor(
        root=server.url, path="/keras/", field="payload", headers=headers, send_as_json=send_as_json
    )
    await asyncio.to_thread(keras_monitor.on_epoch_end, 4, dict(LOGS))
    ours = RemoteMonitor(
        root=server.url, path="/keras/", field="payload", headers=headers, send_as_json=send_as_json
    )
    await run_hooks(ours, [{}] * 4 + [dict(LOGS)])
    keras_request, *ours_requests = await server.wait_requests(6)

    assert ours_requests[-1].body == keras_request.body
    assert ours_requests[-1].content_type == keras_request.content_type
    assert ours_requests[-1].path == keras_request.path == "/keras/"
    assert ours_requests[-1].headers["X-Run"] == "abc"
    if send_as_json:
        assert keras_request.content_type == "application/json"
        data = json.loads(keras_request.body)
    else:
        assert keras_request.content_type == "application/x-www-form-urlencoded"
        data = json.loads(urllib.parse.parse_qs(keras_request.body.decode())["payload"][0])
    assert data == {
        "epoch": 4,
        "loss": 0.25,
        "accuracy": 0.75,
        "count": 3,
        "learning_rate": float(np.float32(0.01)),
        "one": 0,
        "name": "run-1",
    }
    assert ours.statistics() == RemoteMonitorStatistics(
        sent=5, dropped=0, failed=0, retried=0, queued=0, in_flight=0
    )


@pytest.mark.parametrize("send_as_json", [False, True])
async def test_non_finite_values_are_sent_as_json_null(http_server, send_as_json):
    server = await http_server()
    monitor = RemoteMonitor(root=server.url, send_as_json=send_as_json)
    await run_hooks(monitor, [{"loss": math.nan, "x": [1.0, np.float32("inf")], "y": -math.inf}])
    (request,) = await server.wait_requests(1)
    text = request.body.decode()
    if not send_as_json:
        text = urllib.parse.parse_qs(text)["data"][0]

    def reject(constant: str) -> None:
        raise AssertionError(f"not strict JSON: {constant}")

    assert json.loads(text, parse_constant=reject) == {
        "epoch": 0,
        "loss": None,
        "x": [1.0, None],
        "y": None,
    }


async def test_never_answering_server_does_not_block_hooks(http_server, caplog):
    server = await http_server(never_answer)
    runtime = runtime_here()
    monitor = RemoteMonitor(
        root=server.url, timeout_s=0.2, max_retries=1, retry_backoff_s=0.01, close_timeout_s=5.0
    )
    monitor.set_runtime(runtime)
    durations = await run_hooks(monitor, [{"loss": 1.0 - e / 10} for e in range(3)])
    assert max(durations) < HOOK_BOUND_S

    await monitor.aclose()
    await runtime.aclose()
    assert monitor.statistics() == RemoteMonitorStatistics(
        sent=0, dropped=0, failed=3, retried=3, queued=0, in_flight=0
    )
    assert len(server.requests) == 6  # each epoch: one try, one retry
    (warning,) = warnings_of(caplog)  # once for the kind, not once per epoch
    assert "no answer within 0.2 s (RemoteMonitor timeout_s)" in warning
    assert server.url in warning


async def test_server_down_is_reported_once(closed_port_url, caplog):
    monitor = RemoteMonitor(root=closed_port_url, max_retries=2, retry_backoff_s=0.01)
    durations = await run_hooks(monitor, [{"loss": 1.0}, {"loss": 0.5}])
    assert max(durations) < HOOK_BOUND_S
    assert monitor.statistics() == RemoteMonitorStatistics(
        sent=0, dropped=0, failed=2, retried=4, queued=0, in_flight=0
    )
    (warning,) = warnings_of(caplog)
    assert "ClientConnectorError" in warning
    assert closed_port_url.removeprefix("http://") in warning


async def test_server_error_is_retried_until_it_succeeds(http_server, caplog):
    async def fail_once(index: int, request: web.Request) -> web.StreamResponse:
        if index == 0:
            return web.Response(status=500, text="database is warming up")
        return web.Response(text="ok")

    server = await http_server(fail_once)
    monitor = RemoteMonitor(root=server.url, max_retries=2, retry_backoff_s=0.01)
    await run_hooks(monitor, [{"loss": 1.0}])
    assert monitor.statistics() == RemoteMonitorStatistics(
        sent=1, dropped=0, failed=0, retried=1, queued=0, in_flight=0
    )
    first, second = server.requests
    assert first.body == second.body
    (warning,) = warnings_of(caplog)
    assert "HTTP 500 Internal Server Error: 'database is warming up'" in warning
    assert "Retrying" in warning


async def test_client_error_is_not_retried(http_server, caplog):
    async def reject(index: int, request: web.Request) -> web.StreamResponse:
        return web.Response(status=400, text="unknown field")

    server = await http_server(reject)
    monitor = RemoteMonitor(root=server.url, max_retries=3, retry_backoff_s=0.01)
    await run_hooks(monitor, [{"loss": 1.0}, {"loss": 0.9}])
    assert monitor.statistics() == RemoteMonitorStatistics(
        sent=0, dropped=0, failed=2, retried=0, queued=0, in_flight=0
    )
    assert len(server.requests) == 2
    (warning,) = warnings_of(caplog)
    assert "HTTP 400 Bad Request: 'unknown field'" in warning
    assert "Not retried" in warning


async def test_full_queue_drops_the_oldest_and_close_gives_up_at_its_deadline(http_server, caplog):
    server = await http_server(never_answer)
    runtime = runtime_here()
    monitor = RemoteMonitor(root=server.url, timeout_s=30.0, queue_size=2, close_timeout_s=0.2)
    monitor.set_runtime(runtime)
    await run_hooks(monitor, [{"loss": 0.0}], end=False)
    await server.wait_requests(1)  # epoch 0 is in flight, held by the server

    def more_epochs() -> list[float]:
        durations = []
        for epoch in range(1, 5):
            start = time.perf_counter()
            monitor.on_epoch_end(epoch, {"loss": float(epoch)})
            durations.append(time.perf_counter() - start)
        monitor.on_train_end()
        return durations

    assert max(await asyncio.to_thread(more_epochs)) < HOOK_BOUND_S
    await wait_until(lambda: monitor.statistics().dropped == 2)
    assert monitor.statistics() == RemoteMonitorStatistics(
        sent=0, dropped=2, failed=0, retried=0, queued=2, in_flight=1
    )

    await monitor.aclose()
    await runtime.aclose()
    assert monitor.statistics() == RemoteMonitorStatistics(
        sent=0, dropped=2, failed=3, retried=0, queued=0, in_flight=0
    )
    assert len(server.requests) == 1
    full, deadline = warnings_of(caplog)
    assert "queue of 2 posts is full" in full
    assert "dropping the oldest" in full
    assert "3 post(s)" in deadline
    assert "close deadline of 0.2 s" in deadline


async def test_posts_keep_their_order(http_server):
    server = await http_server()
    monitor = RemoteMonitor(root=server.url, send_as_json=True)
    monitor.set_runtime(runtime_here())
    await run_hooks(monitor, [{"loss": float(e)} for e in range(10)])
    await monitor.aclose()
    assert [json.loads(r.body)["epoch"] for r in server.requests] == list(range(10))


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="queue_size must be an integer >= 1, received 0"):
        RemoteMonitor(queue_size=0)
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        RemoteMonitor(timeout_s=0)
    with pytest.raises(ValueError, match="max_retries must be an integer >= 0"):
        RemoteMonitor(max_retries=-1)


def test_runs_without_any_event_loop(caplog, closed_port_url):
    """Driven directly from plain synchronous code, as a Keras user would."""
    monitor = RemoteMonitor(root=closed_port_url, max_retries=0)
    monitor.on_train_begin()
    monitor.on_epoch_end(0, {"loss": 1.0})
    monitor.on_train_end()
    assert monitor.statistics().failed == 1
    assert monitor._own_thread is None
    assert len(warnings_of(caplog)) == 1
