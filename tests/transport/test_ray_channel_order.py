"""The coordinator's end of a Ray channel takes a worker's messages in the order they were
sent, whichever actor call (push or poll) brings them first."""

from __future__ import annotations

import pytest

from distcb.protocol.config import Config
from distcb.protocol.errors import ConnectionClosed, ProtocolError
from distcb.protocol.messages import EpochEnd, Heartbeat, TrainEnd, encode
from distcb.transport.ray_channel import ServerConnection


def epoch_end(epoch: int) -> bytes:
    return encode(EpochEnd(rank=0, epoch=epoch, logs={"loss": 1.0}))


async def received(connection: ServerConnection, count: int) -> list:
    return [await connection.receive() for _ in range(count)]


async def test_batches_that_arrive_early_wait_for_the_missing_one():
    connection = ServerConnection("c", "rank 0", Config())
    connection.deliver([epoch_end(2), epoch_end(3)], 2)  # a push overtook a poll
    connection.deliver([], 0)  # an empty poll: nothing to take in
    connection.deliver([epoch_end(0), epoch_end(1)], 0)  # the poll's batch
    connection.deliver([encode(TrainEnd(rank=0))], 4)
    messages = await received(connection, 5)
    assert [getattr(m, "epoch", "end") for m in messages] == [0, 1, 2, 3, "end"]


async def test_a_batch_numbered_twice_breaks_the_connection():
    connection = ServerConnection("c", "rank 0", Config())
    connection.deliver([epoch_end(0)], 0)
    connection.deliver([epoch_end(0)], 0)
    assert (await connection.receive()).epoch == 0
    with pytest.raises(ProtocolError, match="numbered 0, expected 1"):
        await connection.receive()
    with pytest.raises(ConnectionClosed):
        await connection.receive()


async def test_a_close_waits_for_what_was_sent_before_it():
    connection = ServerConnection("c", "rank 0", Config())
    connection.deliver([encode(Heartbeat())], 1)  # message 0 is still on its way
    connection.close_after(2, "worker finished")
    assert connection.closed is None
    connection.deliver([epoch_end(0)], 0)
    assert connection.closed is not None
    messages = await received(connection, 2)
    assert [m.type for m in messages] == ["epoch_end", "heartbeat"]
    with pytest.raises(ConnectionClosed, match="worker finished"):
        await connection.receive()
