"""The coordinator's engine driven by scripted workers over the in-process transport."""

import asyncio

import msgspec
import pytest

from distcb.callbacks import Callback
from distcb.coordinator.engine import Coordinator
from distcb.protocol.decisions import SetLearningRate, StopTraining
from distcb.protocol.errors import (
    ConnectionClosed,
    JoinTimeoutError,
    ProtocolError,
    WorkerLostError,
)
from distcb.protocol.messages import PROTOCOL_VERSION, Heartbeat, encode
from distcb.testing import ScriptedWorker, simulate
from distcb.transport.memory import connection_pair
from tests.helpers.scripted import FAST, Recorder, StopAtBatch, batches, run_job, start_job


@pytest.mark.parametrize("speeds", [[1, 1, 1], [1, 7, 3], [9, 1, 1]])
def test_window_rule_batch_stop_lands_on_one_common_step(speeds):
    window = 4
    result = simulate(
        [StopAtBatch(1, 5)],
        epoch_logs=[[{"loss": 1.0}] * 3] * 3,
        batch_logs=batches(3, 40, 3),
        config=FAST.replace(window_steps=window),
        yields_per_step=speeds,
    )
    effect_step = 5 + window + 1
    stops = [d for d in result.decisions if isinstance(d, StopTraining)]
    assert len(stops) == 1
    assert stops[0].at.epoch == 1
    assert stops[0].at.step == effect_step
    for worker in result.workers:
        applied = [a for a in worker.applied if isinstance(a.decision, StopTraining)]
        arrived = [a for a in worker.received if isinstance(a.decision, StopTraining)]
        assert [(a.epoch, a.step) for a in applied] == [(1, effect_step)]
        # When the decision arrived, no worker had begun the effect step yet.
        assert arrived[0].epoch == 1
        assert arrived[0].max_step_begun < effect_step
        # Stop lands after the effect step on every worker: same last step.
        assert max(s for e, s in worker.steps_sent if e == 1) == effect_step
        assert worker.epochs_run == 2
    assert result.stopped_epoch == 1
    assert result.history.epoch == [0, 1]


def test_window_bounds_how_far_a_fast_worker_runs_ahead():
    window = 3
    result = simulate(
        [StopAtBatch(5, 0)],  # a batch hook that decides: the window rule is on
        [[{"loss": 1.0}] * 2],
        batch_logs=batches(1, 30, 2),
        config=FAST.replace(window_steps=window),
        yields_per_step=[1, 25],
    )
    fast = result.workers[0]
    # Every step it began, it began within the window of what it knew was processed.
    leads = [b.step - b.processed_known for b in fast.steps_begun]
    assert max(leads) <= window
    assert max(leads) == window  # the fast worker did run up to the window's edge
    assert all(b.window_steps == window for b in fast.steps_begun)


def test_epoch_decisions_reach_every_worker_before_the_next_epoch():
    class Schedule(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.model.optimizer.learning_rate = 0.1 / (epoch + 1)

    result = simulate(
        [Schedule()], [[{"loss": 1.0}, {"loss": 2.0}]] * 3, params={"learning_rate": 0.5}
    )
    assert result.learning_rates == pytest.approx([0.1, 0.05, 0.1 / 3])
    for worker in result.workers:
        assert worker.learning_rates == pytest.approx([0.1, 0.05, 0.1 / 3])
    sets = [d for d in result.decisions if isinstance(d, SetLearningRate)]
    assert [d.at.phase for d in sets] == ["epoch_begin"] * 3
    assert result.history.history["loss"] == [1.5, 1.5, 1.5]


def test_lr_proxy_reads_the_workers_lr_and_keras2_spelling():
    seen = []

    class Reader(Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(float(self.model.optimizer.lr))
            self.model.optimizer.learning_rate.assign(self.model.optimizer.learning_rate * 0.5)

    result = simulate([Reader()], [[{"loss": 1.0}]] * 3, params={"learning_rate": 0.8})
    assert seen == pytest.approx([0.8, 0.4, 0.2])
    assert result.learning_rates == pytest.approx([0.8, 0.4, 0.2])


def test_decisions_are_attributed_to_the_callback_that_made_them():
    class Schedule(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.model.optimizer.learning_rate = 0.1

    result = simulate(
        [Schedule(), StopAtBatch(0, 1)], [[{"loss": 1.0}]], batch_logs=batches(1, 4, 1)
    )
    made_by = {type(r.decision).__name__: r.made_by for r in result.coordinator.decision_log}
    assert made_by == {"SetLearningRate": "Schedule", "StopTraining": "StopAtBatch"}


def test_stop_in_on_train_begin_runs_no_epoch():
    class Never(Callback):
        def on_train_begin(self, logs=None):
            self.model.stop_training = True

    recorder = Recorder()
    result = simulate([Never(), recorder], [[{"loss": 1.0}]] * 3)
    assert result.history.epoch == []
    assert result.workers[0].epochs_run == 0
    assert result.workers[0].stopped_by_decision
    assert recorder.calls[-1][0] == "train_end"


async def test_join_timeout_names_the_missing_ranks_and_aborts_the_others():
    coordinator = Coordinator([], world_size=3, config=FAST.replace(join_timeout_s=0.3))
    workers = [ScriptedWorker(rank, 3, [{"loss": 1.0}]) for rank in (0, 2)]
    tasks = start_job(coordinator, workers)
    with pytest.raises(
        JoinTimeoutError, match=r"Ranks \[1\] of world_size=3 did not join within 0.3 s"
    ) as info:
        await coordinator.run()
    assert info.value.missing_ranks == [1]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    # Each worker that did join was told why the job failed before it started.
    for worker, outcome in zip(workers, results[1::2], strict=True):
        assert worker.epochs_run == 0
        assert "did not join" in (worker.abort_reason or "")
        assert "failed before training started" in str(outcome)


async def test_worker_disconnect_mid_epoch_names_rank_stops_others_runs_train_end():
    recorder = Recorder()
    coordinator = Coordinator([recorder], world_size=3, config=FAST.replace(window_steps=2))
    epoch_logs = [{"loss": 1.0}] * 3
    batch_logs = [[{"loss": 1.0}] * 20] * 3
    workers = [
        ScriptedWorker(0, 3, epoch_logs, batch_logs, config=coordinator.config),
        ScriptedWorker(
            1, 3, epoch_logs, batch_logs, config=coordinator.config, disconnect_at=(1, 3)
        ),
        ScriptedWorker(2, 3, epoch_logs, batch_logs, config=coordinator.config),
    ]
    tasks = start_job(coordinator, workers)
    with pytest.raises(WorkerLostError, match=r"rank 1 disconnected") as info:
        await coordinator.run()
    assert info.value.rank == 1
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], ConnectionError)
    for survivor in (workers[0], workers[2]):
        assert "rank 1" in (survivor.abort_reason or "")
        assert survivor.stopped_by_decision
        assert survivor.epochs_run == 2  # stopped in epoch 1, never began epoch 2
    last = {w.rank: max(s for e, s in w.steps_sent if e == 1) for w in (workers[0], workers[2])}
    assert last[0] == last[2]  # a common step
    assert recorder.calls[-1][0] == "train_end"
    assert [c[1] for c in recorder.calls if c[0] == "epoch_end"] == [0, 1]


async def test_garbage_and_bad_joins_close_only_their_connection():
    coordinator = Coordinator([], world_size=2, config=FAST)
    tasks = start_job(coordinator, [ScriptedWorker(r, 2, [{"loss": 1.0}] * 2) for r in range(2)])
    frames = [
        b"\xc1 not msgpack",
        msgspec.msgpack.encode(
            {"type": "join", "protocol": PROTOCOL_VERSION, "rank": 0, "world_size": 5}
        ),
        encode(Heartbeat()),  # anything but a join first
    ]
    intruders, closed = [], []
    for frame in frames:
        coordinator_end, worker_end = connection_pair("intruder")
        worker_end.push_raw(frame)
        intruders.append(asyncio.create_task(coordinator.serve(coordinator_end)))
        closed.append(asyncio.create_task(_closed_reason(worker_end)))
    history = await coordinator.run()
    assert history.history["loss"] == [1.0, 1.0]
    await asyncio.gather(*intruders)
    reasons = await asyncio.gather(*closed)
    assert "not MessagePack" in reasons[0]
    assert "world_size=5, the coordinator expects 2" in reasons[1]
    assert "must be a join" in reasons[2]
    assert all(r is None for r in await asyncio.gather(*tasks))


async def _closed_reason(connection) -> str:
    # A memory connection carries the coordinator's close reason only in its own log;
    # the coordinator logs what it rejected. Here: wait for the close, return its text.
    try:
        while True:
            await connection.receive()
    except ConnectionClosed as exc:
        return str(exc)


def test_simulate_refuses_mismatched_scripts():
    with pytest.raises(ValueError, match=r"epoch_logs\[1\] has logs for 1 workers"):
        simulate([], [[{"loss": 1.0}, {"loss": 1.0}], [{"loss": 1.0}]])


async def test_a_resumed_fit_counts_epochs_from_initial_epoch():
    class Schedule(Callback):
        def __init__(self):
            super().__init__()
            self.begun = []

        def on_epoch_begin(self, epoch, logs=None):
            self.begun.append(epoch)
            self.model.optimizer.learning_rate = 0.1 * (epoch + 1)

    schedule = Schedule()
    coordinator = Coordinator([schedule], world_size=1, config=FAST)
    # Epochs 3 and 4 of a 5-epoch fit resumed at initial_epoch=3.
    worker = ScriptedWorker(0, 1, [{"loss": 1.0}] * 2, params={"epochs": 5, "initial_epoch": 3})
    history = await run_job(coordinator, [worker])
    assert schedule.begun == [3, 4]
    assert history.epoch == [3, 4]
    assert worker.learning_rates == pytest.approx([0.4, 0.5])


async def test_a_worker_whose_fit_ends_early_does_not_hold_the_others():
    # Rank 1's data runs out after one epoch (its fit ends on its own); rank 0 goes on.
    coordinator = Coordinator([], world_size=2, config=FAST)
    workers = [
        ScriptedWorker(0, 2, [{"loss": 1.0}, {"loss": 0.5}, {"loss": 0.25}], params={"epochs": 3}),
        ScriptedWorker(1, 2, [{"loss": 3.0}], params={"epochs": 3}),
    ]
    history = await run_job(coordinator, workers)
    assert history.epoch == [0, 1, 2]
    assert history.history["loss"] == [2.0, 0.5, 0.25]  # epochs 1 and 2: rank 0 alone
    assert [w.epochs_run for w in workers] == [3, 1]


async def test_a_raising_callback_reaches_every_worker_and_every_on_train_end_runs():
    class Broken(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyError("no such metric")

    recorder = Recorder()
    coordinator = Coordinator([Broken(), recorder], world_size=2, config=FAST)
    workers = [ScriptedWorker(r, 2, [{"loss": 1.0}] * 4) for r in range(2)]
    with pytest.raises(KeyError, match="no such metric"):
        await run_job(coordinator, workers)
    for worker in workers:
        assert "coordinator callback Broken raised KeyError" in (worker.abort_reason or "")
        assert "no such metric" in (worker.job_error or "")
        assert worker.epochs_run == 2  # released at epoch 1's barrier with the stop
    assert recorder.calls[-1][0] == "train_end"  # the other callback's on_train_end ran
    assert [c[1] for c in recorder.calls if c[0] == "epoch_end"] == [0]


async def test_epochs_mismatch_fails_at_the_join_and_tells_every_worker():
    coordinator = Coordinator([], world_size=2, config=FAST)
    workers = [
        ScriptedWorker(0, 2, [{"loss": 1.0}] * 2),
        ScriptedWorker(1, 2, [{"loss": 1.0}] * 3),
    ]
    with pytest.raises(ProtocolError, match=r"rank 1 trains for epochs=3 but the chief for"):
        await run_job(coordinator, workers)
    for worker in workers:
        assert "epochs=3" in (worker.abort_reason or "")
        assert worker.epochs_run == 0


async def test_frames_queued_behind_another_message_are_merged_once_the_queue_drains():
    # A frame and a save report arrive together: the engine defers the frame's merge
    # while more events wait (to merge frames together), and must merge it once the
    # queue is empty even though the last event was not a frame.
    from distcb.protocol.messages import (
        BatchFrame,
        Done,
        EpochEnd,
        Join,
        JoinParams,
        Progress,
        Saved,
        TrainEnd,
    )

    merged = asyncio.Event()
    seen: list[int] = []

    class Hook(Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(batch)
            if len(seen) == 4:
                merged.set()

    coordinator = Coordinator([Hook()], world_size=1, config=FAST)
    coordinator_end, worker_end = connection_pair("rank 0")
    serving = asyncio.create_task(coordinator.serve(coordinator_end))
    running = asyncio.create_task(coordinator.run())

    async def next_reply():
        while True:
            message = await worker_end.receive()
            if not isinstance(message, Heartbeat | Progress):
                return message

    await worker_end.send(Join(rank=0, world_size=1, params=JoinParams(epochs=1, steps=4)))
    assert (await next_reply()).type == "start"
    await worker_end.send(
        BatchFrame(rank=0, epoch=0, steps=[0, 1, 2, 3], logs={"loss": [1.0, 0.9, 0.8, 0.7]})
    )
    await worker_end.send(Saved(rank=0, filepath="model.keras"))
    await asyncio.wait_for(merged.wait(), 10)  # without the drain: only at the epoch end
    assert coordinator.processed_step == 3
    await worker_end.send(EpochEnd(rank=0, epoch=0, logs={"loss": 0.7}))
    assert (await next_reply()).type == "epoch_reply"
    await worker_end.send(TrainEnd(rank=0))
    assert (await next_reply()).type == "train_end_reply"
    await worker_end.send(Done(rank=0, report={}))  # without it: a rank lost at the end
    await worker_end.close("done")
    await asyncio.wait_for(running, 30)
    await serving
    assert seen == [0, 1, 2, 3]
