"""The coordinator's per-rank protocol table (ranks.py's docstring), cell by cell: each worker
message in each rank state is taken in or is a protocol error for that connection only."""

from __future__ import annotations

import asyncio

import pytest

from distcb.coordinator.ranks import RankState, WorkerEntry, check_message
from distcb.coordinator.roster import Roster
from distcb.protocol.config import Config
from distcb.protocol.errors import ConnectionClosed, ProtocolError
from distcb.protocol.messages import (
    BackedUp,
    BatchFrame,
    Done,
    EpochEnd,
    Heartbeat,
    Join,
    JoinParams,
    Preempted,
    Saved,
    TrainEnd,
    WorkerFailed,
)
from distcb.transport.memory import connection_pair

MESSAGES = {
    "batches": BatchFrame(rank=0, epoch=0, steps=[0], logs={"loss": [1.0]}),
    "epoch_end": EpochEnd(rank=0, epoch=0, logs={"loss": 1.0}),
    "train_end": TrainEnd(rank=0),
    "saved": Saved(rank=0, filepath="model.keras"),
    "backed_up": BackedUp(rank=0, epoch=0),
    "done": Done(rank=0),
    "preempted": Preempted(rank=0),
    "worker_failed": WorkerFailed(rank=0, error="boom"),
    "heartbeat": Heartbeat(),
}
# Written out from the protocol's specification, not read from ranks.ALLOWED.
ANY_TIME = {"preempted", "worker_failed", "heartbeat"}
VALID = {
    RankState.JOINED: ANY_TIME,
    RankState.TRAINING: {"batches", "epoch_end", "train_end", "saved", "backed_up"} | ANY_TIME,
    RankState.AT_BARRIER: {"backed_up"} | ANY_TIME,  # a backup persisted off the training path
    RankState.TRAIN_ENDED: {"saved", "backed_up", "done"} | ANY_TIME,
    RankState.DONE: {"heartbeat"},
}
CELLS = [(state, name) for state in RankState for name in MESSAGES]


def check(roster: Roster, entry: WorkerEntry, message) -> None:
    check_message(
        entry,
        message,
        flow_window=roster.flow_window,
        processed_step=roster.processed_step(),
        max_frame_entries=roster.config.max_frame_entries,
    )


def roster_with(state: RankState) -> tuple[Roster, WorkerEntry]:
    roster = Roster(1, Config(), post=lambda event: None, accepting=lambda: True)
    roster.flow_window = 8
    entry = WorkerEntry(0, connection_pair()[0], JoinParams(), 0.0, state=state)
    entry.ended_reply_sent = True  # 'done' then depends on the state alone
    return roster, entry


@pytest.mark.parametrize(("state", "name"), CELLS, ids=[f"{s.value}-{n}" for s, n in CELLS])
def test_every_cell_of_the_table(state, name):
    roster, entry = roster_with(state)
    if name in VALID[state]:
        check(roster, entry, MESSAGES[name])
    else:
        with pytest.raises(ProtocolError, match=f"rank 0 sent '{name}' while {state.value}"):
            check(roster, entry, MESSAGES[name])


def test_the_table_moves_the_rank_on():
    roster, entry = roster_with(RankState.TRAINING)
    check(roster, entry, MESSAGES["epoch_end"])
    assert entry.state is RankState.AT_BARRIER
    roster.live.add(0)
    roster.workers[0] = entry
    roster.begin_epoch(1)  # the engine released the barrier
    assert entry.state is RankState.TRAINING
    check(roster, entry, TrainEnd(rank=0))
    assert entry.state is RankState.TRAIN_ENDED
    check(roster, entry, Done(rank=0))
    assert entry.state is RankState.DONE


def test_done_before_the_train_end_reply_is_refused():
    roster, entry = roster_with(RankState.TRAIN_ENDED)
    entry.ended_reply_sent = False
    with pytest.raises(ProtocolError, match="sent 'done' before the train-end reply"):
        check(roster, entry, MESSAGES["done"])


async def test_a_message_outside_the_table_closes_that_connection_saying_why():
    events = []
    roster = Roster(2, Config(), post=events.append, accepting=lambda: True)
    ours, theirs = connection_pair("rank 0")
    serving = asyncio.create_task(roster.serve(ours))
    await theirs.send(Join(rank=0, world_size=2, params=JoinParams()))
    await theirs.send(Done(rank=0))  # before training: not in the 'joined' row
    async with asyncio.timeout(5):
        await serving
    with pytest.raises(ConnectionClosed, match="sent 'done' while joined"):
        await theirs.receive()
    assert roster.workers[0].dropped  # still joining: the rank may connect again
    assert events == []  # nothing reached the engine
