"""The rendezvous of `distcb launch`: node launchers meet at the coordinator, on node 0.

Synchronous training across nodes needs ``TF_CONFIG`` (every worker's collective
address, in rank order) before any worker creates its strategy, and the ports
are only known on each node. So every node launcher picks one free port per
local worker and registers ``{node_rank, host, ports}`` with the coordinator's
HTTP server; once every node has registered, each receives the whole list and
builds its workers' environment from it (`distcb.launch.env.worker_env`).
Node 0 registers in-process. Four routes, all behind the job's token
(``Authorization: Bearer``), all JSON:

``POST /rendezvous``
    register a node; answers ``{"complete": false, "waiting_for": [...]}``
    (202) until every node registered, then the cluster (200). A request waits
    up to `POLL_S` for the rest; the node asks again until its deadline.
``POST /rendezvous/exit``
    ``{"rank", "code"}``: a worker process of a remote node ended (so node 0
    need not wait for a heartbeat timeout to learn it).
``POST /rendezvous/outcome``
    ``{"node_rank"}``: answers the job's outcome ``{"known", "exit_code",
    "reason"}`` once it is known (202 ``{"known": false}`` after `POLL_S`):
    a node follows it while its workers run, and stops them when the job
    ended without them (they would otherwise wait for a coordinator that is
    gone), then exits with the job's exit code.
``POST /rendezvous/done``
    ``{"node_rank"}``: every worker of that node ended (node 0 keeps its
    server up until every node said so, within `Config.stop_timeout_s`);
    answers like ``/rendezvous/outcome``.

Every node must be launched with the same ``--nnodes`` and
``--nproc-per-node``; a node that disagrees, registers a rank out of range, or
registers after the job started, or claims a node rank another node holds gets 409 with
the reason. A body is read whole, by its ``Content-Length`` (it may arrive in many TCP
segments), within `Config.max_request_body_bytes` and `Config.request_body_timeout_s`
(else 413, 411 or 408), and validated field by field.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from distcb.launch.json_body import BodyError, read_json_body
from distcb.protocol.config import Config
from distcb.protocol.errors import RendezvousError

POLL_S = 10.0
_MAX_HOST = 253


@dataclass(frozen=True)
class NodeInfo:
    """Where one node's workers listen for the other workers (TF collectives).

    Attributes:
        node_rank: 0 .. nnodes - 1.
        host: the address other nodes reach this node at.
        ports: one port per local worker, in local rank order.
    """

    node_rank: int
    host: str
    ports: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"node_rank": self.node_rank, "host": self.host, "ports": list(self.ports)}

    @classmethod
    def from_json(cls, data: Any) -> NodeInfo:
        """Raises ValueError naming the field that is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"a node must be a JSON object, received {type(data).__name__}")
        node_rank, host, ports = data.get("node_rank"), data.get("host"), data.get("ports")
        if isinstance(node_rank, bool) or not isinstance(node_rank, int) or node_rank < 0:
            raise ValueError(f"node_rank must be an int >= 0, received {node_rank!r}")
        if not isinstance(host, str) or not 0 < len(host) <= _MAX_HOST or not host.isprintable():
            raise ValueError(f"host must be a host name or address, received {host!r}")
        if not isinstance(ports, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports
        ):
            raise ValueError(f"ports must be a list of ports 1-65535, received {ports!r}")
        return cls(node_rank, host, tuple(ports))


@dataclass(frozen=True)
class Cluster:
    """Every node of the job, by node rank, and the coordinator's Config."""

    nodes: tuple[NodeInfo, ...]
    config: Config

    @property
    def world_size(self) -> int:
        return sum(len(node.ports) for node in self.nodes)

    def first_rank(self, node_rank: int) -> int:
        """The global rank of `node_rank`'s local worker 0."""
        return sum(len(node.ports) for node in self.nodes[:node_rank])

    def worker_addresses(self) -> list[str]:
        """Every worker's collective address, in global rank order (``TF_CONFIG``'s list)."""
        return [
            f"[{node.host}]:{port}" if ":" in node.host else f"{node.host}:{port}"
            for node in self.nodes
            for port in node.ports
        ]

    def to_json(self) -> dict[str, Any]:
        return {"nodes": [n.to_json() for n in self.nodes], "config": self.config.to_dict()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cluster:
        return cls(
            tuple(NodeInfo.from_json(n) for n in data["nodes"]), Config.from_dict(data["config"])
        )


@dataclass(frozen=True)
class Outcome:
    """How the job ended, as every node's launcher exits with it."""

    exit_code: int
    reason: str | None = None


class Rendezvous:
    """Node 0's side: collects the nodes, hands out the cluster, relays exits and the outcome.

    Args:
        nnodes, nproc_per_node: what node 0 was launched with; every node must agree.
        config: the coordinator's Config (every node's workers get it).
        report_exit: called on the loop with ``(rank, code)`` when a remote worker ended.
    """

    def __init__(
        self,
        nnodes: int,
        nproc_per_node: int,
        config: Config,
        report_exit: Callable[[int, int], Coroutine[Any, Any, None]],
    ):
        self.nnodes = nnodes
        self.nproc_per_node = nproc_per_node
        self.config = config
        self._report_exit = report_exit
        self._nodes: dict[int, NodeInfo] = {}
        self._complete = asyncio.Event()
        self._outcome: Outcome | None = None
        self._outcome_known = asyncio.Event()
        self._done_nodes: set[int] = {0}
        self._all_done = asyncio.Event()
        if nnodes == 1:
            self._all_done.set()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ node 0, in-process

    def register(self, node: NodeInfo) -> None:
        """Add a node (node 0 adds itself directly).

        Raises:
            RendezvousError: a node rank out of range, a port count that is not
                nproc_per_node, or a registration after the job started.
        """
        if not node.node_rank < self.nnodes:
            raise RendezvousError(
                f"node_rank {node.node_rank} is out of range: the job has --nnodes {self.nnodes} "
                f"(node ranks 0-{self.nnodes - 1})"
            )
        if len(node.ports) != self.nproc_per_node:
            raise RendezvousError(
                f"node {node.node_rank} has {len(node.ports)} workers, node 0 has "
                f"--nproc-per-node {self.nproc_per_node}: launch every node with the same value"
            )
        existing = self._nodes.get(node.node_rank)
        if existing == node:
            return  # a retried request (the same node asks again until the cluster is complete)
        if existing is not None:
            # Two launchers claim one node rank: the second would replace the first in
            # TF_CONFIG while the first's workers run, so it is refused.
            started = " (the job has started)" if self._complete.is_set() else ""
            raise RendezvousError(
                f"node_rank {node.node_rank} is already registered by {existing.host} with ports "
                f"{list(existing.ports)}{started}; this registration from {node.host} with ports "
                f"{list(node.ports)} is refused. Give every node its own --node-rank "
                f"(0-{self.nnodes - 1}); a node launcher started again must restart the whole job"
            )
        self._nodes[node.node_rank] = node
        if len(self._nodes) == self.nnodes:
            self._complete.set()

    @property
    def cluster(self) -> Cluster | None:
        if not self._complete.is_set():
            return None
        return Cluster(tuple(self._nodes[r] for r in range(self.nnodes)), self.config)

    def waiting_for(self) -> list[int]:
        return sorted(set(range(self.nnodes)) - set(self._nodes))

    async def wait_complete(self) -> Cluster:
        await self._complete.wait()
        cluster = self.cluster
        assert cluster is not None
        return cluster

    def set_outcome(self, outcome: Outcome) -> None:
        """The job ended: tell the nodes that ask (and those that will)."""
        self._outcome = outcome
        self._outcome_known.set()

    async def wait_nodes_done(self, timeout_s: float) -> list[int]:
        """Wait until every remote node said its workers ended; returns those that did not."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._all_done.wait()
        except TimeoutError:
            pass
        return sorted(set(range(self.nnodes)) - self._done_nodes)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ HTTP

    def routes(
        self, check_token: Callable[[web.Request], web.Response | None]
    ) -> list[web.RouteDef]:
        """The three routes, each behind `check_token` (the server's bearer check)."""

        def guarded(
            handler: Callable[[Any], Awaitable[web.Response]],
        ) -> Callable[[web.Request], Awaitable[web.Response]]:
            async def serve(request: web.Request) -> web.Response:
                denied = check_token(request)
                if denied is not None:
                    return denied
                try:
                    body = await read_json_body(request, self.config)
                    return await handler(body)
                except BodyError as exc:
                    return web.json_response({"error": str(exc)}, status=exc.status)
                except ValueError as exc:
                    return web.json_response({"error": str(exc)}, status=400)
                except RendezvousError as exc:
                    return web.json_response({"error": str(exc)}, status=409)

            return serve

        return [
            web.post("/rendezvous", guarded(self._serve_register)),
            web.post("/rendezvous/exit", guarded(self._serve_exit)),
            web.post("/rendezvous/outcome", guarded(self._serve_outcome)),
            web.post("/rendezvous/done", guarded(self._serve_done)),
        ]

    async def _serve_register(self, body: dict[str, Any]) -> web.Response:
        nnodes, nproc = body.get("nnodes"), body.get("nproc_per_node")
        if (nnodes, nproc) != (self.nnodes, self.nproc_per_node):
            raise RendezvousError(
                f"this node was launched with --nnodes {nnodes} --nproc-per-node {nproc}, node 0 "
                f"with --nnodes {self.nnodes} --nproc-per-node {self.nproc_per_node}; launch "
                "every node with the same values"
            )
        node = NodeInfo.from_json(body.get("node"))
        if node.node_rank == 0:
            raise RendezvousError(
                "node_rank 0 is the coordinator's node; give the others 1, 2, ..."
            )
        self.register(node)
        try:
            async with asyncio.timeout(POLL_S):
                await self._complete.wait()
        except TimeoutError:
            return web.json_response(
                {"complete": False, "waiting_for": self.waiting_for()}, status=202
            )
        cluster = self.cluster
        assert cluster is not None
        return web.json_response({"complete": True, "cluster": cluster.to_json()})

    async def _serve_exit(self, body: dict[str, Any]) -> web.Response:
        rank, code = body.get("rank"), body.get("code")
        world_size = self.nnodes * self.nproc_per_node
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an int 0-{world_size - 1}, received {rank!r}")
        if isinstance(code, bool) or not isinstance(code, int):
            raise ValueError(f"code must be an int, received {code!r}")
        task = asyncio.get_running_loop().create_task(self._report_exit(rank, code))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response({"ok": True})

    def _node_rank(self, body: dict[str, Any]) -> int:
        node_rank = body.get("node_rank")
        if (
            isinstance(node_rank, bool)
            or not isinstance(node_rank, int)
            or not 0 < node_rank < self.nnodes
        ):
            raise ValueError(
                f"node_rank must be an int 1-{self.nnodes - 1}, received {node_rank!r}"
            )
        return node_rank

    async def _serve_outcome(self, body: dict[str, Any]) -> web.Response:
        self._node_rank(body)
        try:
            async with asyncio.timeout(POLL_S):
                await self._outcome_known.wait()
        except TimeoutError:
            return web.json_response({"known": False}, status=202)
        assert self._outcome is not None
        return web.json_response(
            {"known": True, "exit_code": self._outcome.exit_code, "reason": self._outcome.reason}
        )

    async def _serve_done(self, body: dict[str, Any]) -> web.Response:
        self._done_nodes.add(self._node_rank(body))
        if len(self._done_nodes) == self.nnodes:
            self._all_done.set()
        return await self._serve_outcome(body)
