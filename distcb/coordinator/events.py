"""What the coordinator machine is fed, besides ``(rank, message)`` pairs.

A worker's message arrives as the pair ``(rank, message)`` (the hot path: no
wrapper per batch frame), checked by the roster against the rank's protocol state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distcb.protocol.errors import WorkerLostError


@dataclass(frozen=True)
class WorkerLost:
    """Worker `rank` is gone (a connection broke, went silent, misbehaved, or a launcher
    saw it die). `attempt`: the attempt a launcher's report is about (None: this one)."""

    rank: int
    error: WorkerLostError
    attempt: int | None = None


@dataclass(frozen=True)
class Joined:
    """Every rank joined: training may start."""


@dataclass(frozen=True)
class JoinFailed:
    """The join did not complete (a timeout, a rank that died before joining)."""

    error: BaseException


@dataclass(frozen=True)
class StopDeadline:
    """`Config.stop_timeout_s` ran out after the failure of attempt `attempt`."""

    attempt: int


@dataclass(frozen=True)
class GoodbyeDeadline:
    """`Config.reply_timeout_s` ran out after attempt `attempt`'s train-end reply."""

    attempt: int


Event = Any  # tuple[int, Message] | WorkerLost | Joined | JoinFailed | StopDeadline | ...
