"""Issue 25, item 8: what a peer can hold of a TLS coordinator, and what a plaintext peer is
told, against a real `distcb coordinator --tls-cert/--tls-key` subprocess over real sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
import urllib.request

import pytest

from distcb.protocol.config import Config
from distcb.protocol.errors import ConnectionClosed
from distcb.transport.websocket import connect
from tests.helpers.coordinator_process import CoordinatorProcess
from tests.helpers.pki import make_ca, make_server_cert

WAIT_S = 30.0
PARTIAL_CLIENT_HELLO = b"\x16\x03\x01\x00\xff\x01\x00"  # a record header and 2 bytes of 255


@pytest.fixture
def tls_coordinator(tmp_path):
    ca, ca_key, ca_name = make_ca(tmp_path, "job-ca")
    cert, key = make_server_cert(tmp_path, ca_key, ca_name)
    config = {"handshake_timeout_s": 1.0, "join_timeout_s": 120.0, "max_connections": 64}
    args = ("--tls-cert", str(cert), "--tls-key", str(key))
    with CoordinatorProcess(tmp_path, world_size=1, config=config, args=args) as coordinator:
        coordinator.ca = ca
        yield coordinator


def server_statistics(coordinator: CoordinatorProcess) -> dict:
    context = ssl.create_default_context(cafile=str(coordinator.ca))
    request = urllib.request.Request(
        f"https://{coordinator.address}/status",
        headers={"Authorization": f"Bearer {coordinator.token}"},
    )
    with urllib.request.urlopen(request, timeout=WAIT_S, context=context) as response:
        return json.loads(response.read())["server"]


def read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(WAIT_S)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_unfinished_tls_handshakes_time_out_and_free_their_slots(tls_coordinator):
    coordinator = tls_coordinator
    target = (coordinator.host, coordinator.port)
    # 20 that send nothing, 20 that stop inside their ClientHello; all stay open.
    held = [socket.create_connection(target) for _ in range(40)]
    for sock in held[20:]:
        sock.sendall(PARTIAL_CLIENT_HELLO)
    answers = [read_until_closed(sock) for sock in held]  # the server cuts them off
    for sock in held:
        sock.close()
    assert answers == [b""] * 40
    counts = server_statistics(coordinator)
    assert counts["rejected"]["handshake_timeout"] >= 40, counts
    assert counts["connections_open"] == 1, counts  # this request's own
    # 40 more whose clients leave mid-handshake: their slots are free at once.
    left = [socket.create_connection(target) for _ in range(40)]
    for sock in left:
        sock.sendall(PARTIAL_CLIENT_HELLO)
        sock.close()
    deadline = time.monotonic() + WAIT_S
    while (counts := server_statistics(coordinator))["connections_open"] > 1:
        assert time.monotonic() < deadline, counts
        time.sleep(0.05)
    assert counts["rejected"]["handshake_timeout"] < 80, counts  # they left on their own


def test_plain_http_on_the_tls_port_is_answered_400_saying_so(tls_coordinator):
    coordinator = tls_coordinator
    sock = socket.create_connection((coordinator.host, coordinator.port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: coordinator\r\n\r\n")
    answer = read_until_closed(sock).decode()
    sock.close()
    assert answer.startswith("HTTP/1.1 400 Bad Request"), answer
    assert "this coordinator speaks TLS; set DISTCB_TLS_CA" in answer
    assert server_statistics(coordinator)["rejected"]["plaintext"] == 1


async def test_a_worker_without_the_ca_is_told_to_set_it(tls_coordinator):
    coordinator = tls_coordinator
    config = Config(connect_timeout_s=10.0)
    with pytest.raises(ConnectionClosed, match="this coordinator speaks TLS; set DISTCB_TLS_CA"):
        await connect(coordinator.address, coordinator.token, config=config)
    # With the CA it connects.
    connection = await connect(
        coordinator.address, coordinator.token, config=config, ca_file=str(coordinator.ca)
    )
    await connection.close()
    await asyncio.sleep(0)
