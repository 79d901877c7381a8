"""One rank's side of the coordinator: its protocol state, what it may send there, its entry.

Per-rank protocol states, and the worker messages valid in each (anything
else is a protocol error that closes that connection and counts the rank as
lost)::

    state        | batches epoch_end train_end saved backed_up done preempted
    -------------+----------------------------------------------------------------
    joined       |    -        -         -       -       -        -       x
    training     |    x        x         x       x       x        -       x
    at_barrier   |    -        -         -       -       x        -       x
    train_ended  |    -        -         -       x       x        x*      x
    done         |    -        -         -       -       -        -       -

    worker_failed and heartbeat are valid in every state but done (heartbeat: there too).

    * done only once the coordinator sent its train-end reply.

    backed_up may come while a rank waits at a barrier: a worker persists its backup of
    one barrier off its training thread, during the next epoch (`distcb.worker.backup_writer`).

A join is valid only as a connection's first message, and only while the job
is joining (or, during the join phase, to replace a rank's dropped connection).
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import Any

from distcb.protocol import close_codes
from distcb.protocol.connection import Connection
from distcb.protocol.decisions import last_allowed_step
from distcb.protocol.errors import ProtocolError
from distcb.protocol.messages import (
    BackedUp,
    BatchFrame,
    Done,
    EpochEnd,
    Heartbeat,
    JoinParams,
    Message,
    Preempted,
    Saved,
    TrainEnd,
    WorkerFailed,
)


class RankState(enum.Enum):
    JOINED = "joined"
    TRAINING = "training"
    AT_BARRIER = "at_barrier"
    TRAIN_ENDED = "train_ended"
    DONE = "done"


_ANY_TIME = (WorkerFailed, Heartbeat, Preempted)
ALLOWED: dict[RankState, tuple[type[Message], ...]] = {
    RankState.JOINED: _ANY_TIME,
    RankState.TRAINING: (BatchFrame, EpochEnd, TrainEnd, Saved, BackedUp, *_ANY_TIME),
    RankState.AT_BARRIER: (BackedUp, *_ANY_TIME),
    RankState.TRAIN_ENDED: (Saved, BackedUp, Done, *_ANY_TIME),
    RankState.DONE: (Heartbeat,),
}
"""The worker messages valid in each per-rank state (the table in the module docstring)."""


@dataclass
class WorkerEntry:
    """What the coordinator knows of one rank."""

    rank: int
    connection: Connection
    params: JoinParams
    last_seen: float
    last_active: float = 0.0  # its last message other than a heartbeat
    state: RankState = RankState.JOINED
    report: dict[str, Any] | None = None
    epoch: int = 0
    last_step: int = -1  # the last batch step it reported this epoch
    sent_steps: int = 0  # batch entries received in the job
    ended_reply_sent: bool = False
    lost_reason: str | None = None
    dropped: bool = False  # its connection closed before training started
    away: bool = False  # dropped without misbehaving: the join waits for it to come back
    silence_reported: bool = False
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def train_ended(self) -> bool:
        return self.state in (RankState.TRAIN_ENDED, RankState.DONE)

    @property
    def done(self) -> bool:
        return self.state is RankState.DONE


def check_message(
    entry: WorkerEntry,
    message: Message,
    *,
    flow_window: int | None,
    processed_step: int,
    max_frame_entries: int,
) -> None:
    """Raise ProtocolError unless `message` is valid from `entry` now (the state table),
    and move `entry` to the state it puts it in. Batch frames: at most `max_frame_entries`
    entries, none beyond the window rule's `last_allowed_step(processed_step,
    flow_window)` (`flow_window` None: no batch logs wanted)."""
    claimed = getattr(message, "rank", entry.rank)
    if claimed != entry.rank:
        raise ProtocolError(
            f"rank {entry.rank}'s connection sent {message.type!r} claiming rank {claimed}"
        )
    if not isinstance(message, ALLOWED[entry.state]):
        raise ProtocolError(
            f"rank {entry.rank} sent {message.type!r} while {entry.state.value}"
            + (
                "; 'done' is valid only after the train-end reply"
                if isinstance(message, Done)
                else ""
            )
        )
    if isinstance(message, Done) and not entry.ended_reply_sent:
        raise ProtocolError(f"rank {entry.rank} sent 'done' before the train-end reply")
    if isinstance(message, BatchFrame | EpochEnd) and message.epoch != entry.epoch:
        raise ProtocolError(
            f"rank {entry.rank} sent {message.type!r} for epoch {message.epoch} during "
            f"epoch {entry.epoch}"
        )
    if isinstance(message, BatchFrame):
        _check_frame(entry, message, flow_window, processed_step, max_frame_entries)
    elif isinstance(message, EpochEnd):
        entry.state = RankState.AT_BARRIER
    elif isinstance(message, TrainEnd):
        entry.state = RankState.TRAIN_ENDED
    elif isinstance(message, Done):
        entry.state = RankState.DONE


def _check_frame(
    entry: WorkerEntry, frame: BatchFrame, window: int | None, processed_step: int, limit: int
) -> None:
    if frame.entries > limit:
        raise ProtocolError(
            f"rank {entry.rank} exceeded Config.max_frame_entries={limit}: a frame of "
            f"{frame.entries} batch entries",
            close_code=close_codes.FRAME_ENTRIES,
        )
    if not frame.steps:
        return
    if frame.steps[0] <= entry.last_step:
        raise ProtocolError(
            f"rank {entry.rank} sent step {frame.steps[0]} of epoch {frame.epoch} after step "
            f"{entry.last_step}: batch logs must arrive in step order, once"
        )
    if window is None:
        raise ProtocolError(
            f"rank {entry.rank} sent batch logs, which the coordinator did not ask for"
        )
    bound = last_allowed_step(processed_step, window)
    if frame.steps[-1] > bound:
        raise ProtocolError(
            f"rank {entry.rank} exceeded the window of {window} steps (Config.window_steps / "
            f"Config.max_ahead_steps) a rank may run ahead: step {frame.steps[-1]} with step "
            f"{processed_step} processed",
            close_code=close_codes.WINDOW,
        )
    entry.last_step = frame.steps[-1]
    entry.sent_steps += frame.entries


def merged_params(workers: dict[int, WorkerEntry], world_size: int) -> dict[str, Any]:
    """What callbacks see as `params`: the chief's fit parameters plus job-wide facts.

    Raises:
        ProtocolError: the workers disagree on what must be common (epochs).
    """
    chief = workers[0].params
    for rank, worker in sorted(workers.items()):
        if worker.params.epochs != chief.epochs:
            raise ProtocolError(
                f"rank {rank} trains for epochs={worker.params.epochs!r} but the chief for "
                f"epochs={chief.epochs!r}; every worker must run the same epochs"
            )
    samples = [w.params.samples for w in workers.values()]
    directions: dict[str, str] = {}
    for worker in workers.values():
        directions.update(worker.params.directions)
    return {
        "verbose": chief.verbose,
        "epochs": chief.epochs,
        "initial_epoch": chief.initial_epoch,
        "steps": chief.steps,
        "num_workers": world_size,
        "samples": sum(s for s in samples if s is not None)
        if all(s is not None for s in samples)
        else None,
        "batch_size": chief.batch_size,
        "metrics": list(chief.metrics),
        "directions": directions,
        "flavour": chief.flavour,
    }


def lost_reason(exc: BaseException) -> str:
    if isinstance(exc, ProtocolError):
        return f"sent a bad message: {exc}"
    return f"disconnected ({exc})"
