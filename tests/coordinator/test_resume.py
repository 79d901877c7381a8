"""Exact resume with scripted workers: restarts and resumes end as an uninterrupted run does.

The real-process runs (Keras, SIGKILL, SIGTERM, a killed launcher) are in
tests/launch/test_exact_resume.py; these drive the same coordinator and worker code with
scripted models, fast enough to cover every path.
"""

import asyncio
import os

import pytest

from distcb.callbacks import CSVLogger, EarlyStopping, ModelCheckpoint, ReduceLROnPlateau
from distcb.coordinator.engine import Coordinator
from distcb.coordinator.listener import JobListener
from distcb.coordinator.resume import restartable
from distcb.protocol.config import Config
from distcb.protocol.errors import RestartsExhausted, WorkerLostError
from distcb.testing import ScriptedModel, ScriptedWorker, simulate
from distcb.transport.memory import connection_pair
from distcb.worker.session import WorkerSession

CONFIG = Config(heartbeat_interval_s=0.05, heartbeat_timeout_s=5, stop_timeout_s=5)
VAL = [1.0, 0.9, 0.85, 0.84, 0.86, 0.83, 0.9, 0.95, 0.99, 1.1, 1.2, 1.3]


def job(run_dir, **kwargs):
    """A 2-worker job whose callbacks keep state: it stops early, reduces the LR, restores the
    best weights, saves the best model and writes a CSV."""
    os.makedirs(run_dir, exist_ok=True)
    chain = [
        EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True),
        ReduceLROnPlateau(monitor="val_loss", patience=1, factor=0.5),
        ModelCheckpoint(
            os.path.join(run_dir, "best.keras"), monitor="val_loss", save_best_only=True
        ),
        CSVLogger(os.path.join(run_dir, "log.csv")),
    ]
    epochs = [
        [{"loss": 2.0 - 0.1 * e, "val_loss": v}, {"loss": 2.1 - 0.1 * e, "val_loss": v + 0.01}]
        for e, v in enumerate(VAL)
    ]
    batches = [[[{"loss": 1.0 + s}] * 2 for s in range(5)] for _ in VAL]
    result = simulate(
        chain,
        epochs,
        batch_logs=batches,
        weights=[f"w{e}" for e in range(len(VAL))],
        params={"learning_rate": 0.1},
        config=CONFIG,
        run_dir=str(run_dir),
        **kwargs,
    )
    with open(os.path.join(run_dir, "log.csv"), "rb") as handle:
        csv = handle.read()
    return {
        "history": result.history.history,
        "epochs": result.history.epoch,
        "decisions": [_portable(d) for d in result.decisions],
        "weights": [w.current_weights for w in result.workers],
        "learning_rates": [w.learning_rate for w in result.workers],
        "stopped_epoch": chain[0].stopped_epoch,
        "saves": [a.decision for a in result.workers[0].applied if a.decision.kind == "save"],
        "csv": csv,
        "attempts": len(result.attempts),
        "resumed_after": [w.resumed_after for w in result.workers],
        "failures": result.coordinator.failures,
    }


def _portable(decision):
    """A decision with file paths relative to the run directory (runs use their own), and
    without the snapshot files a backup keeps (storage housekeeping: which files a rollback
    may need depends on which backups were committed, which a failed backup changes)."""
    fields = {k: getattr(decision, k) for k in decision.__struct_fields__}
    if "filepath" in fields:
        fields["filepath"] = os.path.basename(fields["filepath"])
    fields.pop("keep_snapshots", None)
    return (decision.kind, tuple(sorted(fields.items(), key=lambda kv: kv[0])))


SAME = ("history", "epochs", "decisions", "weights", "learning_rates", "stopped_epoch", "csv")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    outcome = job(tmp_path_factory.mktemp("uninterrupted"), max_restarts=1)
    assert outcome["stopped_epoch"] == 8  # EarlyStopping fired...
    assert outcome["learning_rates"][0] < 0.1  # ...ReduceLROnPlateau reduced...
    assert outcome["weights"][0] == "w5"  # ...and the best weights came back
    return outcome


def assert_same(outcome, uninterrupted):
    for key in SAME:
        assert outcome[key] == uninterrupted[key], key


def test_a_crashed_worker_restarts_the_job_as_if_nothing_had_happened(tmp_path, uninterrupted):
    outcome = job(tmp_path, max_restarts=1, disconnect_at={1: (4, 2)})
    assert_same(outcome, uninterrupted)
    assert outcome["attempts"] == 2
    assert outcome["resumed_after"] == [3, 3]  # the barrier before the crash
    assert [f.rank for f in outcome["failures"]] == [1]


def test_a_preempted_worker_stops_every_worker_and_the_job_goes_on(tmp_path, uninterrupted):
    outcome = job(tmp_path, max_restarts=1, preempt_at={0: (6, 1)})
    assert_same(outcome, uninterrupted)
    assert outcome["attempts"] == 2
    assert "preempted" in str(outcome["failures"][0])


def test_two_failures_in_one_run(tmp_path, uninterrupted):
    outcome = job(
        tmp_path, max_restarts=2, disconnect_at=[{0: (2, 4)}, {1: (7, 0)}], preempt_at=None
    )
    assert_same(outcome, uninterrupted)
    assert outcome["attempts"] == 3


def test_restarts_exhausted_names_every_failure(tmp_path):
    with pytest.raises(
        RestartsExhausted, match=r"failed 2 times, more than max_restarts=1"
    ) as info:
        job(tmp_path, max_restarts=1, disconnect_at=[{0: (2, 4)}, {1: (7, 0)}])
    assert [f.rank for f in info.value.failures] == [0, 1]
    assert "rank 1 " in str(info.value).splitlines()[-1]


def test_only_workers_that_went_away_are_restartable():
    # A worker whose own code raised would raise again: no restart (launchers report it
    # so; tests/launch/test_exact_resume.py checks it with a real process).
    assert not restartable(WorkerLostError(1, "training raised ValueError: a bug", retryable=False))
    assert restartable(WorkerLostError(1, "disconnected"))
    assert not restartable(ValueError("a coordinator callback raised"))


def test_a_failed_backup_is_no_rollback_point(tmp_path, uninterrupted, monkeypatch):
    original = ScriptedModel.save_state

    def flaky(self, directory):
        if self.weights == "w3":
            raise OSError("No space left on device")
        original(self, directory)

    monkeypatch.setattr(ScriptedModel, "save_state", flaky)
    # Epoch 3's backup fails: the crash in epoch 4 rolls back to epoch 2, and replays 3.
    outcome = job(tmp_path, max_restarts=1, disconnect_at={1: (4, 2)})
    assert_same(outcome, uninterrupted)
    assert outcome["attempts"] == 2
    assert outcome["resumed_after"] == [2, 2]


def test_resume_goes_on_after_the_launcher_died(tmp_path, uninterrupted):
    # The first run dies (its only allowance used) after a few committed barriers...
    with pytest.raises(WorkerLostError):
        job(tmp_path, resume=True, disconnect_at={0: (5, 3)})
    assert "epoch-00000004.committed" in os.listdir(tmp_path / "state")
    # ...and resume=True goes on from the newest committed one.
    outcome = job(tmp_path, resume=True)
    assert_same(outcome, uninterrupted)


def test_a_journal_is_not_overwritten_without_resume(tmp_path, uninterrupted):
    job(tmp_path, max_restarts=1)
    with pytest.raises(Exception, match="pass resume=True to go on from it"):
        job(tmp_path, max_restarts=1)


def test_restarts_need_a_run_directory():
    with pytest.raises(ValueError, match="need a state directory"):
        simulate([], [[{"loss": 1.0}]], max_restarts=1)


def test_a_crash_before_the_first_commit_starts_over_and_keeps_the_csv_header(
    tmp_path, uninterrupted
):
    # Nothing committed yet: the restart goes back to how the job began (the CSV's header
    # to be written again, not lost with the rows it cuts).
    outcome = job(tmp_path, max_restarts=1, disconnect_at={1: (0, 2)})
    assert_same(outcome, uninterrupted)
    assert outcome["attempts"] == 2
    assert outcome["resumed_after"] == [None, None]
    assert outcome["csv"].startswith(b"epoch,")


async def test_a_worker_lost_before_it_joined_restarts_the_job(tmp_path, uninterrupted):
    """Rank 0's process dies before it joins (its launcher reports it): the attempt ends
    in a restart, not in a crash of the next one (KeyError: 0, issue 25)."""
    chain = [CSVLogger(os.path.join(tmp_path, "log.csv"))]
    coordinator = Coordinator(
        chain, world_size=2, config=CONFIG, state_dir=str(tmp_path / "state"), max_restarts=1
    )
    tasks = []

    def start(ranks):
        for rank in ranks:
            worker = ScriptedWorker(
                rank=rank,
                world_size=2,
                epoch_logs=[{"loss": 1.0 - 0.1 * e, "val_loss": v} for e, v in enumerate(VAL)],
                config=CONFIG,
                run_dir=str(tmp_path),
            )
            coordinator_end, worker_end = connection_pair(f"worker {rank}")
            tasks.append(asyncio.create_task(coordinator.serve(coordinator_end)))
            tasks.append(asyncio.create_task(worker.run(worker_end)))

    class Restarter(JobListener):
        def restarting(self, attempt, failure):
            start([0, 1])

    coordinator.add_listener(Restarter())
    start([1])
    coordinator.report_lost(0, "was killed by SIGKILL before it joined")
    try:
        history = await coordinator.run()
    finally:
        await asyncio.gather(*tasks, return_exceptions=True)
    assert history.epoch == list(range(len(VAL)))
    assert [f.rank for f in coordinator.failures] == [0]
    csv = (tmp_path / "log.csv").read_bytes()  # noqa: ASYNC240 (the job has ended)
    assert csv.startswith(b"epoch,")
    assert csv.count(b"\n") == len(VAL) + 1  # the header and every epoch


async def test_a_late_report_about_the_ended_attempt_does_not_fail_the_next_one(
    tmp_path, uninterrupted
):
    """A survivor told to restart exits "retry me"; its launcher may report that exit only
    once the next attempt has begun (CI saw it: the report read a file first). Reported
    with the attempt it belongs to, it is dropped; it must not fail the new attempt's join."""
    chain = [CSVLogger(os.path.join(tmp_path, "log.csv"))]
    coordinator = Coordinator(
        chain, world_size=2, config=CONFIG, state_dir=str(tmp_path / "state"), max_restarts=1
    )
    tasks = []

    def start(ranks):
        for rank in ranks:
            worker = ScriptedWorker(
                rank=rank,
                world_size=2,
                epoch_logs=[{"loss": 1.0 - 0.1 * e, "val_loss": v} for e, v in enumerate(VAL)],
                config=CONFIG,
                run_dir=str(tmp_path),
            )
            coordinator_end, worker_end = connection_pair(f"worker {rank}")
            tasks.append(asyncio.create_task(coordinator.serve(coordinator_end)))
            tasks.append(asyncio.create_task(worker.run(worker_end)))

    class Restarter(JobListener):
        def restarting(self, attempt, failure):
            assert coordinator.attempt == attempt + 1
            coordinator.report_lost(1, "exited with code 143 (preempted)", attempt=attempt)
            asyncio.get_running_loop().create_task(
                coordinator.report_exit(1, "exited with code 0", attempt=attempt)
            )
            start([0, 1])

    coordinator.add_listener(Restarter())
    start([1])
    coordinator.report_lost(0, "was killed by SIGKILL before it joined", attempt=0)
    try:
        history = await coordinator.run()
    finally:
        await asyncio.gather(*tasks, return_exceptions=True)
    assert history.epoch == list(range(len(VAL)))
    assert [f.rank for f in coordinator.failures] == [0]


def test_a_worker_lost_before_its_goodbye_runs_the_train_end_again(
    tmp_path, uninterrupted, monkeypatch
):
    # Rank 0 dies after its train end, before it said goodbye (its report, and the restored
    # best weights, die with it): the job goes on from the last barrier, which had decided
    # to stop, and only the train end runs again.
    original = WorkerSession.finish
    dropped = []

    async def finish(self, report):
        if self.rank == 0 and not dropped:
            dropped.append(self.rank)
            await self.close()  # gone without a goodbye
            return
        await original(self, report)

    monkeypatch.setattr(WorkerSession, "finish", finish)
    outcome = job(tmp_path, max_restarts=1)
    assert dropped == [0]
    assert_same(outcome, uninterrupted)
    assert outcome["attempts"] == 2
    assert outcome["resumed_after"] == [8, 8]
