"""Repeated log lines, at most one per kind and interval: the rate of log lines is ours to
decide, not a peer's (`Config.rejection_log_interval_s`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["LogLimiter"]


class LogLimiter:
    """Logs at most one line per `kind` and `interval_s`; the next one says how many it left
    out.

    Args:
        logger: where the lines go.
        interval_s: the shortest time between two lines of one kind.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def log(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Count one line of `kind`; log it unless one was logged within the interval.
        Returns whether it was logged."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return False
        self._last[kind] = now
        left_out = self._left_out.pop(kind, 0)
        if left_out:
            message += (
                f" ({left_out} more like it since the last one; at most one line per "
                f"{self.interval_s:g} s, Config.rejection_log_interval_s)"
            )
        self._logger.log(level, message, *args)
        return True
