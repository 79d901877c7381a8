"""Websocket transport over aiohttp, the workers' end (the coordinator's server is
`distcb.server.WebSocketServer`).

    connection = await connect(address, token)

Each message is one binary frame of MessagePack; every connection carries the
job token (``Authorization: Bearer <token>``), checked before the upgrade; a
frame that is not JSON, not a valid message, or over
`Config.max_message_bytes` closes that connection only (a joined worker then
counts as lost). aiohttp's errors become `ConnectionClosed` at this boundary.

Timeouts, all from `Config`: `connect` retries refused connections until
``connect_timeout_s``; a send waits at most ``reply_timeout_s``; a worker that
hears nothing from its coordinator (not even a heartbeat) for
``heartbeat_timeout_s`` counts it as lost; a closing handshake waits two
``heartbeat_interval_s``. On the coordinator side, a silent worker is the
coordinator's to judge (its join timeout and heartbeat watchdog).
"""

from distcb.transport.websocket_client import connect
from distcb.transport.websocket_connection import WebSocketConnection

__all__ = ["WebSocketConnection", "connect"]
