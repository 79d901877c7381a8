"""The rendezvous of `distcb launch` over real sockets: node 0's real HTTP server (the
coordinator's `WebSocketServer` with the rendezvous routes), requests written byte by byte
the way a real network may deliver them (issue 25, items 11 and 12)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from distcb.coordinator.engine import Coordinator
from distcb.launch.rendezvous import NodeInfo, Rendezvous
from distcb.launch.rendezvous_client import RendezvousClient
from distcb.protocol.config import Config
from distcb.server import WebSocketServer

TOKEN = "rendezvous-test-token"
WAIT_S = 30.0


async def _no_exit(rank: int, code: int) -> None:
    pass


@contextlib.asynccontextmanager
async def node0(nnodes: int, config: Config) -> AsyncIterator[tuple[WebSocketServer, Rendezvous]]:
    """Node 0 as `distcb launch` runs it: the server, the rendezvous, node 0 registered."""
    coordinator = Coordinator([], world_size=nnodes, config=config)
    rendezvous = Rendezvous(nnodes, 1, config, report_exit=_no_exit)
    server = WebSocketServer(coordinator, token=TOKEN, config=config)
    server.add_routes(rendezvous.routes(server.check_token))
    await server.start()
    rendezvous.register(NodeInfo(0, "127.0.0.1", (40000,)))
    try:
        yield server, rendezvous
    finally:
        await rendezvous.aclose()
        await server.aclose()


def registration(node_rank: int, nnodes: int, port: int) -> bytes:
    node = {"node_rank": node_rank, "host": "127.0.0.1", "ports": [port]}
    return json.dumps({"nnodes": nnodes, "nproc_per_node": 1, "node": node}).encode()


def head(server: WebSocketServer, length: int, path: str = "/rendezvous") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {server.address}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    ).encode()


async def post_in_pieces(
    server: WebSocketServer, pieces: list[bytes], *, length: int | None = None
) -> tuple[int, dict]:
    """Send the headers, then each piece of the body as its own TCP segment (the server has
    read one before the next is written); (status, JSON body) of the answer."""
    host, _, port = server.address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        body_length = sum(len(p) for p in pieces) if length is None else length
        writer.write(head(server, body_length))
        await writer.drain()
        for piece in pieces:
            await asyncio.sleep(0.2)  # a network's delay between two segments
            writer.write(piece)
            await writer.drain()
        async with asyncio.timeout(WAIT_S):
            # By Content-Length: the server may linger on a body it did not read.
            answer_head = await reader.readuntil(b"\r\n\r\n")
            status_line, *lines = answer_head.decode().split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines if line)
            body = await reader.readexactly(int(headers["Content-Length"]))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return int(status_line.split()[1]), json.loads(body)


async def test_a_registration_split_over_two_tcp_segments_is_read_whole():
    async with node0(2, Config()) as (server, rendezvous):
        body = registration(1, 2, 40001)
        status, answer = await post_in_pieces(server, [body[:20], body[20:]])
    assert status == 200, answer
    assert answer["complete"] is True
    assert [n["node_rank"] for n in answer["cluster"]["nodes"]] == [0, 1]
    assert answer["cluster"]["nodes"][1]["ports"] == [40001]


async def test_a_body_that_never_arrives_whole_is_answered_408_naming_the_setting():
    config = Config(request_body_timeout_s=0.5)
    async with node0(2, config) as (server, rendezvous):
        body = registration(1, 2, 40001)
        status, answer = await post_in_pieces(server, [body[:20]], length=len(body))
        waiting = rendezvous.waiting_for()
    assert status == 408, answer
    assert "Config.request_body_timeout_s=0.5 s" in answer["error"]
    assert waiting == [1]  # nothing of it was registered


async def test_a_body_over_the_limit_is_refused_before_it_is_read():
    config = Config(max_request_body_bytes=1024)
    async with node0(2, config) as (server, _):
        status, answer = await post_in_pieces(server, [], length=10**9)
    assert status == 413, answer
    assert "Config.max_request_body_bytes=1024" in answer["error"]


async def test_a_second_node_claiming_a_registered_node_rank_is_refused():
    async with node0(3, Config()) as (server, rendezvous):
        # Node 1 registers and waits for node 2 (its request is held open meanwhile).
        first = asyncio.ensure_future(post_in_pieces(server, [registration(1, 3, 40001)]))
        for _ in range(int(WAIT_S / 0.01)):
            if rendezvous.waiting_for() == [2]:
                break
            await asyncio.sleep(0.01)
        assert rendezvous.waiting_for() == [2]
        # Another launcher started with --node-rank 1 by mistake.
        status, answer = await post_in_pieces(server, [registration(1, 3, 40009)])
        assert status == 409, answer
        error = answer["error"]
        assert "node_rank 1 is already registered by 127.0.0.1 with ports [40001]" in error
        assert "Give every node its own --node-rank (0-2)" in error
        # The same node asking again (its request timed out) is still welcome.
        retried = asyncio.ensure_future(post_in_pieces(server, [registration(1, 3, 40001)]))
        status2, answer2 = await post_in_pieces(server, [registration(2, 3, 40002)])
        first_status, first_answer = await first
        retried_status, _ = await retried
    assert (status2, first_status, retried_status) == (200, 200, 200), (answer2, first_answer)
    ports = [n["ports"] for n in first_answer["cluster"]["nodes"]]
    assert ports == [[40000], [40001], [40002]]


@pytest.mark.parametrize("body", [b"[1, 2]", b"{not json"])
async def test_a_body_that_is_not_a_json_object_is_answered_400(body):
    async with node0(2, Config()) as (server, _):
        status, answer = await post_in_pieces(server, [body])
    assert status == 400, answer
    assert "JSON" in answer["error"]


async def test_a_node_refused_503_over_a_connection_bound_asks_again():
    config = Config(max_anonymous_per_address=1)
    async with node0(2, config) as (server, _):
        host, _, port = server.address.rpartition(":")
        _, idle = await asyncio.open_connection(host, int(port))  # the address's one slot
        client = RendezvousClient(server.address, TOKEN, deadline_s=WAIT_S)
        joining = asyncio.ensure_future(client.join(NodeInfo(1, "127.0.0.1", (40001,)), 2, 1))
        await asyncio.sleep(0.5)  # it is refused meanwhile (503), and asks again
        refused = server.statistics()["rejected"]["over_address_limit"]
        idle.close()
        cluster = await asyncio.wait_for(joining, WAIT_S)
    assert refused >= 1
    assert [n.node_rank for n in cluster.nodes] == [0, 1]
