"""A JSON request body read whole and within bounds, for the launcher's HTTP routes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from distcb.protocol.config import Config

__all__ = ["BodyError", "read_json_body"]


class BodyError(Exception):
    """A request body that cannot be read: the HTTP status to answer, and why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def read_json_body(request: web.Request, config: Config) -> dict[str, Any]:
    """The request's whole body (however many TCP segments it came in), as a JSON object.

    Raises:
        BodyError: no ``Content-Length`` (411), one over `Config.max_request_body_bytes`
            (413), a body that did not arrive within `Config.request_body_timeout_s` (408)
            or ended early (400).
        ValueError: the body is not a JSON object.
    """
    length = request.content_length
    limit = config.max_request_body_bytes
    if length is None:
        raise BodyError(411, "the request needs a Content-Length header (no chunked bodies)")
    if length > limit:
        raise BodyError(
            413, f"the body has {length} bytes, over Config.max_request_body_bytes={limit}"
        )
    try:
        async with asyncio.timeout(config.request_body_timeout_s):
            raw = await request.content.readexactly(length)
    except TimeoutError:
        raise BodyError(
            408,
            f"the body's {length} bytes did not arrive within "
            f"Config.request_body_timeout_s={config.request_body_timeout_s:g} s",
        ) from None
    except asyncio.IncompleteReadError as exc:
        raise BodyError(
            400, f"the body ended after {len(exc.partial)} of its {length} bytes"
        ) from None
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError(f"the body must be a JSON object, received {type(body).__name__}")
    return body
