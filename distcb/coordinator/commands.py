"""What the coordinator machine asks its driver to do (it does no I/O itself).

The machine's steps are generators: each yields commands and, for those that
answer (`RunHooks`, `WriteJournal`, `CommitJournal`, `CheckIdentity`), receives
the answer as the value of its ``yield``. Any driver may carry them out: the
async engine (`distcb.coordinator.engine`) does, and so does a test, inline.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from distcb.coordinator.journal import JournalEntry
from distcb.coordinator.model_proxy import DecisionRecord
from distcb.protocol.logs import Logs
from distcb.protocol.messages import Message, Saved

_T = TypeVar("_T")


@dataclass(frozen=True)
class Broadcast:
    """Send `message` to every live rank (one that cannot be reached is a WorkerLost)."""

    message: Message


@dataclass(frozen=True)
class Drop:
    """Close rank `rank`'s connection: it is lost (`reason`)."""

    rank: int
    reason: str


@dataclass(frozen=True)
class RunHooks:
    """Call `fn` (callback hooks: user code, it may block) off the event loop, one at a
    time. Answer: its return value, or `HooksRaised`."""

    fn: Callable[[], Any]


@dataclass(frozen=True)
class HooksRaised:
    """The answer to `RunHooks` when `fn` raised `error`."""

    error: Exception


@dataclass(frozen=True)
class WriteJournal:
    """Write `entry` (fsynced, on the journal's thread). Answer: True once written."""

    entry: JournalEntry


@dataclass(frozen=True)
class CommitJournal:
    """Commit the barrier of `epoch` (every rank backed it up). Answer: None."""

    epoch: int


@dataclass(frozen=True)
class CheckIdentity:
    """Check the workers' part of the job's identity against the journal. Answer: None,
    or the error (JournalMismatchError, IntegrityError) that refuses it."""

    workers: dict[str, dict[str, Any]]  # `identity.describe_workers`


@dataclass(frozen=True)
class CloseCallbacks:
    """Close what the callbacks opened (async sinks). Answer: None."""


@dataclass(frozen=True)
class StartTimer:
    """Feed `event` back to the machine after `delay_s` seconds."""

    delay_s: float
    event: Any


@dataclass(frozen=True)
class EpochReleased:
    """Tell the listeners: epoch `epoch` was released with `logs` and `records`."""

    epoch: int
    logs: Logs
    records: Sequence[DecisionRecord]


@dataclass(frozen=True)
class SavedFile:
    """Tell the listeners: a rank saved (or failed to save) a file."""

    message: Saved


@dataclass(frozen=True)
class Finish:
    """The attempt is over: the driver stops feeding it and ends it (restart, fail, return)."""


Command = (
    Broadcast
    | Drop
    | RunHooks
    | WriteJournal
    | CommitJournal
    | CheckIdentity
    | CloseCallbacks
    | StartTimer
    | EpochReleased
    | SavedFile
    | Finish
)

Steps = Generator[Command, Any, None]
"""A machine step: yields commands, receives the answers of those that answer."""

Asking = Generator[Command, Any, _T]
"""A machine step that ends with a value."""
