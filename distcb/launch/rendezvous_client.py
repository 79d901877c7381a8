"""A remote node's side of the rendezvous of `distcb launch` (`distcb.launch.rendezvous`):
register with node 0, report its workers' exits, and follow the job's outcome."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from typing import Any

import aiohttp
from yarl import URL

from distcb.launch.rendezvous import POLL_S, Cluster, NodeInfo, Outcome
from distcb.protocol.errors import RendezvousError
from distcb.transport.tls import PLAINTEXT_TO_TLS, client_context, speaks_tls

__all__ = ["RendezvousClient"]


class _Busy(Exception):
    """Node 0 answered 503 (over a connection bound): asked again, until the deadline."""


class RendezvousClient:
    """A remote node's side: register, report exits, fetch the outcome (HTTP, bearer token).

    Args:
        address: the coordinator's ``host:port``.
        token: the job's token.
        deadline_s: how long to keep trying to reach the coordinator and to wait for the
            other nodes (`Config.join_timeout_s`).
        ca_file: the PEM CA node 0's certificate is verified against; given, the client
            speaks https.
    """

    def __init__(self, address: str, token: str, *, deadline_s: float, ca_file: str | None = None):
        self.base = f"{'http' if ca_file is None else 'https'}://{address}"
        self._headers = {"Authorization": f"Bearer {token}"}
        self.deadline_s = deadline_s
        self._ssl: ssl.SSLContext | bool = True if ca_file is None else client_context(ca_file)

    async def join(self, node: NodeInfo, nnodes: int, nproc_per_node: int) -> Cluster:
        """Register `node` and wait for every other node.

        Raises:
            RendezvousError: refused (with node 0's reason), a wrong token, or no complete
                cluster within the deadline.
        """
        body = {"nnodes": nnodes, "nproc_per_node": nproc_per_node, "node": node.to_json()}
        deadline = time.monotonic() + self.deadline_s
        answer = await self._until_complete("/rendezvous", body, deadline, "the other nodes")
        return Cluster.from_json(answer["cluster"])

    async def report_exit(self, rank: int, code: int) -> None:
        """Best effort: node 0 may be gone already."""
        with contextlib.suppress(RendezvousError, aiohttp.ClientError, OSError, TimeoutError):
            await self._post("/rendezvous/exit", {"rank": rank, "code": code}, timeout_s=5.0)

    async def outcome(self, node_rank: int, timeout_s: float, *, done: bool) -> Outcome | None:
        """The job's outcome from node 0 (`done`: and say this node's workers all ended), or
        None when node 0 cannot tell it within `timeout_s`."""
        path = "/rendezvous/done" if done else "/rendezvous/outcome"
        deadline = time.monotonic() + timeout_s
        try:
            answer = await self._until_complete(
                path, {"node_rank": node_rank}, deadline, "the job's end", "known"
            )
        except RendezvousError:
            return None
        return Outcome(int(answer["exit_code"]), answer.get("reason"))

    async def _until_complete(
        self,
        path: str,
        body: dict[str, Any],
        deadline: float,
        what: str,
        done_key: str = "complete",
    ) -> dict[str, Any]:
        last_error = "no answer"
        delay_s = 0.05
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RendezvousError(
                    f"no rendezvous with the coordinator at {self.base} within "
                    f"{self.deadline_s:g} s while waiting for {what} (last: {last_error}); check "
                    "--coordinator, that node 0 runs, and raise Config.join_timeout_s if the "
                    "nodes start far apart"
                )
            try:
                answer = await self._post(path, body, timeout_s=min(POLL_S + 5.0, remaining + 1))
            except (aiohttp.ClientConnectionError, OSError, TimeoutError, _Busy) as exc:
                await self._check_plaintext_to_tls(exc)
                last_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(min(delay_s, max(0.0, deadline - time.monotonic())))
                delay_s = min(delay_s * 2, 1.0)
                continue
            if answer.get(done_key):
                return answer
            waiting = answer.get("waiting_for")
            last_error = f"waiting for nodes {waiting}" if waiting else "not known yet"

    async def _check_plaintext_to_tls(self, error: BaseException) -> None:
        """A plaintext request dropped by a server that speaks TLS: say so, and stop."""
        if not self.base.startswith("http:") or not isinstance(
            error, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError
        ):
            return
        url = URL(self.base)
        if (
            url.host is not None
            and url.port is not None
            and await speaks_tls(url.host, url.port, timeout_s=5.0)
        ):
            raise RendezvousError(f"{self.base} dropped a plaintext request: {PLAINTEXT_TO_TLS}")

    async def _post(self, path: str, body: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(
                self.base + path, json=body, headers=self._headers, ssl=self._ssl
            ) as response,
        ):
            if response.status == 401:
                raise RendezvousError(
                    f"the coordinator at {self.base} rejected the token: give every node the "
                    "token node 0 has (DISTCB_TOKEN or --token-file)"
                )
            if response.status == 503:  # over a connection bound: busy for now
                raise _Busy(f"HTTP 503: {(await response.text())[:200].strip()}")
            if response.status == 404:
                raise RendezvousError(
                    f"{self.base} has no rendezvous: is it a coordinator started by "
                    "`distcb launch` on node 0?"
                )
            data = await response.json(content_type=None)
            if response.status in (400, 409):
                raise RendezvousError(f"the coordinator refused this node: {data.get('error')}")
            if response.status >= 400:
                raise RendezvousError(f"the coordinator answered HTTP {response.status}: {data}")
            if not isinstance(data, dict):
                raise RendezvousError(f"the coordinator answered {data!r}, not a JSON object")
            return data
