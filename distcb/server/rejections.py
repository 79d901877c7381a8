"""Rejected connections, counted by kind and logged at a rate that is ours to decide."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["KINDS", "RejectionLog"]

logger = logging.getLogger("distcb.server")

KINDS = (
    "token",
    "over_capacity",
    "handshake_timeout",
    "join_timeout",
    "accept_error",
    "plaintext",
    "over_address_limit",
)
"""Why connections are rejected, as counted in ``/status``."""


class RejectionLog:
    """Counts rejected connections by kind; logs at most one warning per kind and interval.

    Args:
        interval_s: the shortest time between two warnings of one kind.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._clock = clock
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = dict.fromkeys(KINDS, 0)

    def reject(self, kind: str, detail: str) -> None:
        """Count one rejection of `kind`; log `detail` unless one was logged recently."""
        self.counts[kind] += 1
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._left_out[kind] += 1
            return
        self._last[kind] = now
        left_out, self._left_out[kind] = self._left_out[kind], 0
        more = (
            f" ({left_out} more of this kind since the last warning; at most one warning per "
            f"Config.rejection_log_interval_s={self.interval_s:g} s, all counted in /status)"
            if left_out
            else ""
        )
        logger.warning("rejected a connection: %s%s", detail, more)
