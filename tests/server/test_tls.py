"""TLS off loopback: wss:// with a certificate the test makes, workers verifying it against a
CA file, a clear failure on the wrong CA; and the CLI serving TLS from files."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distcb.coordinator.engine import Coordinator
from distcb.protocol.config import Config
from distcb.protocol.errors import ConnectionClosed
from distcb.server import WebSocketServer
from distcb.server.tls import server_context
from distcb.testing import ScriptedWorker
from distcb.transport import connector_for, tls
from distcb.transport.websocket import connect
from tests.helpers.pki import make_ca, make_server_cert

ROOT = Path(__file__).resolve().parents[2]
FAST = Config(heartbeat_interval_s=0.05, heartbeat_timeout_s=5.0, connect_timeout_s=20.0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_key, ca_name = make_ca(directory, "distcb-test-ca")
    other_ca, _, _ = make_ca(directory, "some-other-ca")
    cert, key = make_server_cert(directory, ca_key, ca_name)
    return {"ca": ca, "other_ca": other_ca, "cert": cert, "key": key}


async def test_workers_verify_the_coordinator_and_the_job_runs_over_wss(pki):
    coordinator = Coordinator([], world_size=2, config=FAST)
    context = server_context(str(pki["cert"]), str(pki["key"]))
    async with WebSocketServer(coordinator, ssl=context) as server:
        assert server.url.startswith("wss://")
        run = asyncio.create_task(coordinator.run())
        # host:port plus a CA: the worker dials wss:// (what DISTCB_TLS_CA does).
        opens = [
            connector_for(server.address, server.token, FAST, tls_ca=str(pki["ca"]))
            for _ in range(2)
        ]
        connections = [await open_connection() for open_connection in opens]
        workers = [ScriptedWorker(r, 2, [{"loss": 1.0 + r}] * 2, config=FAST) for r in range(2)]
        await asyncio.gather(*(w.run(c) for w, c in zip(workers, connections, strict=True)))
        history = await asyncio.wait_for(run, 30)
        for connection in connections:
            await connection.close()
        assert server.statistics()["tls"] is True
    assert history.history["loss"] == [1.5, 1.5]


async def test_a_wrong_ca_fails_at_once_naming_the_ca(pki):
    coordinator = Coordinator([], world_size=1, config=FAST)
    context = server_context(str(pki["cert"]), str(pki["key"]))
    async with WebSocketServer(coordinator, ssl=context) as server:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed, match="TLS with the coordinator") as failed:
            await connect(server.address, server.token, config=FAST, ca_file=str(pki["other_ca"]))
        # At once, not after retrying for Config.connect_timeout_s (20 s here).
        assert time.monotonic() - started < FAST.connect_timeout_s / 2
        assert "some-other-ca.pem" in str(failed.value)
        assert "certificate verify failed" in str(failed.value)
        # A plaintext client gets nothing from a TLS server either.
        with pytest.raises(ConnectionClosed):
            await connect(server.address, server.token, config=FAST.replace(connect_timeout_s=1.0))


def test_tls_files_are_checked_with_what_was_received(pki, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        server_context(str(tmp_path / "missing.pem"), str(pki["key"]))
    with pytest.raises(ValueError, match="could not load the TLS certificate"):
        server_context(str(pki["ca"]), str(pki["key"]))  # the key is not the CA's
    with pytest.raises(ValueError, match="DISTCB_TLS_CA"):
        tls.client_context(str(tmp_path / "missing-ca.pem"))
    with pytest.raises(ValueError, match="plaintext URL"):
        asyncio.run(connect("ws://127.0.0.1:1", "t", ca_file=str(pki["ca"])))


def test_the_cli_serves_wss_off_loopback_and_refuses_plaintext_without_insecure(pki, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), DISTCB_TOKEN="cli-tls-token")
    base = [sys.executable, "-m", "distcb", "coordinator", "--world-size", "1", "--port", "0"]
    refused = subprocess.run(
        [*base, "--host", "0.0.0.0"], env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2
    assert "plaintext" in refused.stderr
    assert "--insecure" in refused.stderr
    tls_env = dict(env, DISTCB_TLS_CERT=str(pki["cert"]), DISTCB_TLS_KEY=str(pki["key"]))
    process = subprocess.Popen(
        [*base, "--host", "0.0.0.0"], env=tls_env, stdout=subprocess.PIPE, text=True
    )
    try:
        port = re.search(r"listening on \S+:(\d+)", process.stdout.readline()).group(1)

        async def work() -> None:
            connection = await connect(
                f"127.0.0.1:{port}", "cli-tls-token", config=FAST, ca_file=str(pki["ca"])
            )
            await ScriptedWorker(0, 1, [{"loss": 1.0}], config=FAST).run(connection)
            await connection.close()

        asyncio.run(work())
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
