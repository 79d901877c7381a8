"""resume=True refuses another job's journal: the identity covers the workers' fit
parameters (epochs, samples, batch size, metrics, seed...) as well as the world size and
the callbacks, and the refusal names the difference."""

import os

import pytest

from distcb.callbacks import EarlyStopping
from distcb.coordinator.identity import check_workers, describe_workers, workers_difference
from distcb.coordinator.journal import Journal, JournalMismatchError, describe_job
from distcb.protocol.config import Config
from distcb.protocol.messages import JoinParams
from distcb.testing import simulate

CONFIG = Config(heartbeat_interval_s=0.05, heartbeat_timeout_s=5, stop_timeout_s=5)


def params(**changes):
    values = dict(
        epochs=20,
        steps=4,
        samples=64,
        val_samples=32,
        batch_size=16,
        metrics=["loss", "val_loss"],
        directions={"loss": "min"},
        learning_rate=0.01,
        flavour="keras3",
        seed=1234,
        verbose=0,
        host="a:1",
    )
    values.update(changes)
    return JoinParams(**values)


def two_ranks(**changes):
    return describe_workers({0: params(**changes), 1: params(**changes)})


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"epochs": 25}, "epochs: the journal's job has 20, this job 25"),
        ({"seed": 99}, "seed: the journal's job has 1234, this job 99"),
        ({"batch_size": 32}, "batch_size: the journal's job has 16, this job 32"),
        ({"steps": 2}, "steps: the journal's job has 4, this job 2"),
        ({"metrics": ["loss"]}, "metrics: the journal's job has ['loss', 'val_loss'], this job"),
        ({"flavour": "tf_keras"}, "flavour: the journal's job has 'keras3', this job 'tf_keras'"),
        ({"learning_rate": 0.1}, "learning_rate: the journal's job has 0.01, this job 0.1"),
    ],
)
def test_a_difference_on_every_rank_is_named_once(change, expected):
    assert workers_difference(two_ranks(), two_ranks(**change)).startswith(expected)


def test_a_difference_on_one_rank_names_the_rank():
    now = describe_workers({0: params(), 1: params(samples=32)})
    assert workers_difference(two_ranks(), now) == (
        "rank 1 samples: the journal's job has 64, this job 32"
    )


def test_what_does_not_change_the_computation_is_no_difference():
    assert workers_difference(two_ranks(), two_ranks(verbose=2, host="b:2")) is None


def test_workers_are_recorded_once_then_checked(tmp_path):
    journal = Journal(str(tmp_path / "state"), describe_job(2, [EarlyStopping()]))
    journal.start()
    check_workers(journal, two_ranks())  # recorded
    check_workers(journal, two_ranks())  # the same job
    assert journal.check_job() is True  # the coordinator's part is untouched
    with pytest.raises(JournalMismatchError, match="epochs: the journal's job has 20, this job 25"):
        check_workers(journal, two_ranks(epochs=25))


def scripted_job(run_dir, epochs, **kwargs):
    logs = [[{"loss": 1.0 / (e + 1), "val_loss": 1.0}] * 2 for e in range(epochs)]
    return simulate(
        [EarlyStopping(monitor="val_loss", patience=100)],
        logs,
        batch_logs=[[[{"loss": 1.0}] * 2 for _ in range(3)] for _ in range(epochs)],
        params={"learning_rate": 0.1, "samples": 8},
        config=CONFIG,
        run_dir=str(run_dir),
        **kwargs,
    )


def test_resume_refuses_a_journal_of_a_job_with_other_epochs(tmp_path):
    # The first job (20 epochs) dies after a few committed barriers...
    with pytest.raises(Exception, match="rank 0"):
        scripted_job(tmp_path, 20, resume=True, disconnect_at={0: (5, 1)})
    assert "epoch-00000004.committed" in os.listdir(tmp_path / "state")
    # ...a job that differs only in its epochs is refused, naming the difference...
    with pytest.raises(JournalMismatchError, match="epochs: the journal's job has 20, this job 25"):
        scripted_job(tmp_path, 25, resume=True)
    # ...and the job itself goes on from the journal.
    result = scripted_job(tmp_path, 20, resume=True)
    assert result.history.epoch == list(range(20))
    assert [w.resumed_after for w in result.workers] == [4, 4]
