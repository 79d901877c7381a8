"""The transport interface: `Connection`, declared in `distcb.protocol.connection`.

Re-exported here for the transports (memory, websocket, Ray) and the server code
that implement or hold connections; the coordinator imports it from the protocol
layer, so no import runs from the coordinator back up to the transports.
"""

from __future__ import annotations

from distcb.protocol.connection import Connection
from distcb.protocol.errors import ConnectionClosed

__all__ = ["Connection", "ConnectionClosed"]
