"""Fuzz the coordinator's message handlers (hypothesis): a real Coordinator over the memory
transport, an honest rank 0 (a scripted worker) and a rank 1 that joins and then sends a
random sequence of valid and invalid messages, in and out of protocol order.

Invariants: `Coordinator.run` ends within a bound; it returns, or raises the job's own
error (a DistcbError) that names rank 1, never rank 0; rank 0 is never counted as lost and
either finishes or is told why the job stopped.

`make test` runs a fixed budget (FUZZ_EXAMPLES, default 30); `make fuzz` a longer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distcb.callbacks import Callback
from distcb.callbacks.history import History
from distcb.coordinator.engine import Coordinator
from distcb.protocol.config import Config
from distcb.protocol.errors import DistcbError, JobFailedError
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
    encode,
)
from distcb.testing import ScriptedWorker
from distcb.transport.memory import connection_pair

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
BOUND_S = 20.0  # a job of two short epochs ends well within this, whatever rank 1 sends
CONFIG = Config(
    heartbeat_interval_s=0.05,
    heartbeat_timeout_s=5.0,
    stop_timeout_s=2.0,
    reply_timeout_s=2.0,
    window_steps=4,
    max_ahead_steps=8,
    max_frame_entries=16,
)


class Observer(Callback):
    decides_on_batch = False

    def on_train_batch_end(self, batch, logs=None):
        pass


ranks = st.sampled_from([1, 1, 1, 0, 7])
epochs = st.integers(0, 2)
values = st.one_of(st.floats(allow_nan=True), st.integers(-3, 3))
steps = st.lists(st.integers(0, 40), max_size=20, unique=True).map(sorted)


@st.composite
def batch_frames(draw):
    chosen = draw(steps)
    column = draw(st.lists(values, min_size=len(chosen), max_size=len(chosen)))
    return BatchFrame(rank=draw(ranks), epoch=draw(epochs), steps=chosen, logs={"loss": column})


valid_messages = st.one_of(
    batch_frames(),
    st.builds(EpochEnd, rank=ranks, epoch=epochs, logs=st.just({"loss": 1.0})),
    st.builds(EpochEnd, rank=ranks, epoch=epochs, logs=st.just({"other": 2.0})),
    st.builds(TrainEnd, rank=ranks),
    st.builds(Done, rank=ranks),
    st.builds(Saved, rank=ranks, filepath=st.text(min_size=1, max_size=30)),
    st.builds(WorkerFailed, rank=ranks, error=st.text(max_size=30)),
    st.builds(BackedUp, rank=ranks, epoch=epochs, error=st.none() | st.text(max_size=10)),
    st.builds(Preempted, rank=ranks),
    st.just(Heartbeat()),
    st.builds(Join, rank=st.just(1), world_size=st.just(2)),
).map(encode)
invalid_frames = st.one_of(
    st.binary(max_size=40),
    st.dictionaries(st.sampled_from(["type", "rank", "epoch", "steps", "logs"]), values).map(
        msgspec.msgpack.encode
    ),
    st.builds(
        lambda t, r: msgspec.msgpack.encode({"type": t, "rank": r}),
        st.sampled_from(["start", "abort", "batches", "epoch_end", "nope"]),
        st.one_of(st.integers(-2, 3), st.text(max_size=3)),
    ),
)
params = st.builds(
    JoinParams,
    epochs=st.sampled_from([2, 2, 2, 3, None]),
    steps=st.sampled_from([None, 4]),
    metrics=st.sampled_from([["loss"], []]),
)


async def run_job(join_params: JoinParams, frames: list[bytes]):
    coordinator = Coordinator([Observer()], world_size=2, config=CONFIG)
    honest = ScriptedWorker(
        0,
        2,
        [{"loss": 1.0}, {"loss": 0.5}],
        batch_logs=[[{"loss": 1.0}] * 4] * 2,
        params={"epochs": 2, "steps": 4},
        config=CONFIG,
    )
    ends = [connection_pair(f"rank {r}") for r in range(2)]
    serving = [asyncio.create_task(coordinator.serve(c)) for c, _ in ends]
    honest_task = asyncio.create_task(honest.run(ends[0][1]))

    async def fuzzed() -> None:
        peer = ends[1][1]
        await peer.send(Join(rank=1, world_size=2, params=join_params))
        for frame in frames:
            peer.push_raw(frame)
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        await peer.close("the fuzzed peer is done")

    fuzz_task = asyncio.create_task(fuzzed())
    outcome: object
    async with asyncio.timeout(BOUND_S):
        try:
            outcome = await coordinator.run()
        except Exception as exc:  # the invariant is checked below
            outcome = exc
        results = await asyncio.gather(honest_task, fuzz_task, *serving, return_exceptions=True)
    return coordinator, honest, outcome, results


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(join_params=params, frames=st.lists(st.one_of(valid_messages, invalid_frames), max_size=12))
def test_a_misbehaving_rank_ends_only_itself(join_params, frames):
    coordinator, honest, outcome, results = asyncio.run(run_job(join_params, frames))
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, DistcbError), repr(outcome)
        text = str(outcome).lower()
        assert "rank 1" in text, text
        assert not re.match(r"rank 0\b", text), text  # rank 0 is never the one blamed
        with contextlib.suppress(AttributeError):
            assert outcome.rank == 1
    assert 0 in coordinator.roster.live  # rank 0 was never counted as lost
    honest_result = results[0]
    if isinstance(honest_result, BaseException):  # told why: the job failed because of rank 1
        # The coordinator was not lost: it said the job failed (nothing to retry).
        assert isinstance(honest_result, JobFailedError), repr(honest_result)
        assert "rank 1" in str(honest_result).lower(), str(honest_result)
    else:
        # Rank 0 finished its fit: the job returned the History of both of its epochs, or
        # failed blaming rank 1 (checked above) once rank 0 was done.
        assert isinstance(outcome, History | DistcbError), repr(outcome)
        if isinstance(outcome, History):
            assert outcome.epoch == [0, 1]
            assert 0 in outcome.worker_reports  # rank 0 said goodbye and was heard
