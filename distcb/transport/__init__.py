"""Transports: memory (one event loop), inproc (threads of one process), websocket (aiohttp),
ray (actors). Connections only.

`connector_for(address, ...)` picks a worker's transport from its coordinator
address: ``ray:<actor>`` is the Ray transport, ``inproc:<name>`` the in-process
one (the thread backend), anything else (``host:port``, ``ws://``, ``wss://``)
the websocket client. Backends are imported on use, so
that this package imports neither aiohttp nor ray.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable

from distcb.protocol.config import Config
from distcb.transport.base import Connection, ConnectionClosed

# Address scheme -> "module:function" opening a connection as (address, token, *, config).
CONNECTORS = {
    "ray": "distcb.transport.ray:connect",
    "inproc": "distcb.transport.inproc:connect",
}
DEFAULT_CONNECTOR = "distcb.transport.websocket_client:connect"

__all__ = ["CONNECTORS", "Connection", "ConnectionClosed", "connector_for"]


def connector_for(
    address: str, token: str, config: Config, *, tls_ca: str | None = None
) -> Callable[[], Awaitable[Connection]]:
    """A coroutine function that opens a worker's connection to the coordinator at `address`.

    `tls_ca` (``DISTCB_TLS_CA``): the CA file the websocket client verifies the
    coordinator's certificate against (``wss://``); other transports take none.
    """
    target = CONNECTORS.get(address.partition(":")[0], DEFAULT_CONNECTOR)
    extra = {"ca_file": tls_ca} if tls_ca and target == DEFAULT_CONNECTOR else {}

    async def connect() -> Connection:
        module_name, function_name = target.split(":")
        open_connection = getattr(importlib.import_module(module_name), function_name)
        connection: Connection = await open_connection(address, token, config=config, **extra)
        return connection

    return connect
