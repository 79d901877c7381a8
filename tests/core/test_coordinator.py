import asyncio
import json

import pytest

from distcb.callbacks import Callback
from distcb.core.config import Config
from distcb.core.coordinator import Coordinator
from distcb.core.decisions import SetLearningRate, StopTraining
from distcb.core.errors import JoinTimeoutError, WorkerLostError
from distcb.testing import ScriptedWorker, asimulate, simulate
from distcb.transport.memory import connection_pair

FAST = Config(heartbeat_interval_s=0.05, heartbeat_timeout_s=5.0, stop_timeout_s=5.0)


class StopAtBatch(Callback):
    def __init__(self, epoch, step):
        super().__init__()
        self.at = (epoch, step)
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.model.stop_training = True


class Recorder(Callback):
    def __init__(self):
        super().__init__()
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append(("train_begin",))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append(("epoch_end", epoch, dict(logs)))

    def on_train_end(self, logs=None):
        self.calls.append(("train_end", dict(logs or {})))


def batches(epochs, steps, workers, value=1.0):
    return [
        [[{"loss": value + s} for _ in range(workers)] for s in range(steps)] for _ in range(epochs)
    ]


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

    class Watch(Callback):
        def __init__(self):
            super().__init__()
            self.leads = []
            self.workers = None

        def on_train_batch_end(self, batch, logs=None):
            sent = [max((s for e, s in w.steps_sent if e == 0), default=-1) for w in self.workers]
            self.leads.append(max(sent) - batch)

    watch = Watch()

    async def go():
        task = asimulate(
            [watch],
            [[{"loss": 1.0}] * 2],
            batch_logs=batches(1, 30, 2),
            config=FAST.replace(window_steps=window),
            yields_per_step=[1, 25],
        )
        return await task

    # Workers are reachable through the result only afterwards; peek via a hook instead.
    import distcb.testing as testing

    original = testing.ScriptedWorker.__post_init__
    created = []

    def spy(self):
        original(self)
        created.append(self)

    testing.ScriptedWorker.__post_init__ = spy
    try:
        watch.workers = created
        asyncio.run(go())
    finally:
        testing.ScriptedWorker.__post_init__ = original
    # The merged step `batch` was just processed; no worker had begun beyond batch + W + 1.
    assert max(watch.leads) <= window + 1
    assert max(watch.leads) >= 1  # the fast worker did run ahead


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


async def test_join_timeout_names_the_missing_ranks():
    coordinator = Coordinator([], world_size=3, config=FAST.replace(join_timeout_s=0.3))
    tasks = []
    for rank in (0, 2):
        coordinator_end, worker_end = connection_pair()
        tasks.append(asyncio.create_task(coordinator.serve(coordinator_end)))
        worker = ScriptedWorker(rank, 3, [{"loss": 1.0}])
        tasks.append(asyncio.create_task(worker.run(worker_end)))
    with pytest.raises(
        JoinTimeoutError, match=r"Ranks \[1\] of world_size=3 did not join within 0.3 s"
    ) as info:
        await coordinator.run()
    assert info.value.missing_ranks == [1]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(r is None or isinstance(r, Exception) for r in results)


class Disconnecting(ScriptedWorker):
    """Closes its connection after `die_at` = (epoch, step) was sent."""

    die_at: tuple[int, int] = (1, 3)

    async def _wait_window(self, epoch, step):
        if (epoch, step) == self.die_at:
            await self._connection.close("simulated crash")
            raise ConnectionError("simulated crash")
        await super()._wait_window(epoch, step)


async def test_worker_disconnect_mid_epoch_names_rank_stops_others_runs_train_end():
    recorder = Recorder()
    coordinator = Coordinator([recorder], world_size=3, config=FAST.replace(window_steps=2))
    epoch_logs = [{"loss": 1.0}] * 3
    batch_logs = [[{"loss": 1.0}] * 20] * 3
    workers = [
        ScriptedWorker(0, 3, epoch_logs, batch_logs),
        Disconnecting(1, 3, epoch_logs, batch_logs),
        ScriptedWorker(2, 3, epoch_logs, batch_logs),
    ]
    tasks = []
    for worker in workers:
        coordinator_end, worker_end = connection_pair()
        tasks.append(asyncio.create_task(coordinator.serve(coordinator_end)))
        tasks.append(asyncio.create_task(worker.run(worker_end)))
    with pytest.raises(WorkerLostError, match=r"\[Rank 1\] disconnected") as info:
        await coordinator.run()
    assert info.value.rank == 1
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], ConnectionError)
    for survivor in (workers[0], workers[2]):
        assert survivor.abort_reason is not None
        assert "Rank 1" in survivor.abort_reason
        assert survivor.stopped_by_decision
        assert survivor.epochs_run == 2  # stopped in epoch 1, never began epoch 2
    last = {w.rank: max(s for e, s in w.steps_sent if e == 1) for w in (workers[0], workers[2])}
    assert last[0] == last[2]  # a common step
    assert recorder.calls[-1][0] == "train_end"
    assert [c[1] for c in recorder.calls if c[0] == "epoch_end"] == [0, 1]


async def test_garbage_and_bad_joins_close_only_their_connection():
    coordinator = Coordinator([], world_size=2, config=FAST)
    tasks = []
    for rank in range(2):
        coordinator_end, worker_end = connection_pair()
        tasks.append(asyncio.create_task(coordinator.serve(coordinator_end)))
        tasks.append(
            asyncio.create_task(ScriptedWorker(rank, 2, [{"loss": 1.0}] * 2).run(worker_end))
        )
    intruders = []
    for frame in [
        "not json",
        json.dumps({"type": "join", "protocol": 1, "rank": 0, "world_size": 5, "params": {}}),
        json.dumps({"type": "heartbeat"}),
    ]:
        coordinator_end, worker_end = connection_pair("intruder")
        worker_end._outbox.put_nowait(frame)
        intruders.append(asyncio.create_task(coordinator.serve(coordinator_end)))
        tasks.append(asyncio.create_task(_expect_closed(worker_end)))
    history = await coordinator.run()
    assert history.history["loss"] == [1.0, 1.0]
    await asyncio.gather(*intruders)
    assert all(r is None for r in await asyncio.gather(*tasks))


async def _expect_closed(connection):
    from distcb.core.transport import ConnectionClosed

    async def drain():
        while True:
            await connection.receive()

    with pytest.raises(ConnectionClosed):
        await drain()


def test_simulate_refuses_mismatched_scripts():
    with pytest.raises(ValueError, match=r"epoch_logs\[1\] has logs for 1 workers"):
        simulate([], [[{"loss": 1.0}, {"loss": 1.0}], [{"loss": 1.0}]])


def test_a_resumed_fit_counts_epochs_from_initial_epoch():
    class Schedule(Callback):
        def __init__(self):
            super().__init__()
            self.begun = []

        def on_epoch_begin(self, epoch, logs=None):
            self.begun.append(epoch)
            self.model.optimizer.learning_rate = 0.1 * (epoch + 1)

    async def go():
        schedule = Schedule()
        coordinator = Coordinator([schedule], world_size=1, config=FAST)
        coordinator_end, worker_end = connection_pair()
        # Epochs 3 and 4 of a 5-epoch fit resumed at initial_epoch=3.
        worker = ScriptedWorker(0, 1, [{"loss": 1.0}] * 2, params={"epochs": 5, "initial_epoch": 3})
        serve = asyncio.create_task(coordinator.serve(coordinator_end))
        run = asyncio.create_task(worker.run(worker_end))
        history = await coordinator.run()
        await asyncio.gather(serve, run)
        return schedule, history, worker

    schedule, history, worker = asyncio.run(go())
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
    tasks = []
    for worker in workers:
        coordinator_end, worker_end = connection_pair()
        tasks.append(asyncio.create_task(coordinator.serve(coordinator_end)))
        tasks.append(asyncio.create_task(worker.run(worker_end)))
    history = await asyncio.wait_for(coordinator.run(), 10)
    await asyncio.gather(*tasks)
    assert history.epoch == [0, 1, 2]
    assert history.history["loss"] == [2.0, 0.5, 0.25]  # epochs 1 and 2: rank 0 alone
    assert [w.epochs_run for w in workers] == [3, 1]
