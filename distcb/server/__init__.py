"""The coordinator's server: HTTP and websocket routes (aiohttp), admission before the upgrade,
TLS, and the status page with its static files.

This layer sits above `coordinator/` (it serves one `Coordinator`, reads its status and hears
its decisions) and below `testing` and `launch/`, which start it. Workers never import it:
their end of the websocket is `distcb.transport.websocket_client`.

    async with WebSocketServer(coordinator) as server:        # workers reach server.address
        history = await coordinator.run()
"""

from distcb.server.websocket_server import WS_PATH, WebSocketServer, is_loopback

__all__ = ["WS_PATH", "WebSocketServer", "is_loopback"]
