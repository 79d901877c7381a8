"""distcb.run(backend="ray"): real Keras workers as Ray actors."""

from __future__ import annotations

import json
import os
import time

import pytest

import distcb
from distcb.callbacks import EarlyStopping, LearningRateScheduler
from tests.helpers.ray_fns import killed_mid_epoch
from tests.helpers.worker_fns import tiny_keras3

pytestmark = pytest.mark.slow
FAST = distcb.Config(heartbeat_interval_s=0.2, heartbeat_timeout_s=10.0, stop_timeout_s=10.0)


def callbacks():
    schedule = LearningRateScheduler(lambda epoch, lr: 0.05 / (epoch + 1))
    # No epoch improves `loss` by more than 10: best is epoch 0, stop after `patience` epochs.
    stopper = EarlyStopping(monitor="loss", min_delta=10.0, patience=2, restore_best_weights=True)
    return schedule, stopper


def test_ray_backend_decides_like_the_process_backend(
    ray_cluster, no_leaked_actors, tmp_path, read_reports
):
    runs = {}
    for backend in ("process", "ray"):
        run_dir = tmp_path / backend
        run_dir.mkdir()
        schedule, stopper = callbacks()
        history = distcb.run(
            tiny_keras3,
            num_workers=2,
            kwargs={"epochs": 10},
            callbacks=[schedule, stopper],
            run_dir=str(run_dir),
            config=FAST,
            backend=backend,
        )
        runs[backend] = (history, stopper, read_reports(run_dir, 2))
    (p_history, p_stopper, p_reports), (r_history, r_stopper, r_reports) = runs.values()
    assert r_history.epoch == p_history.epoch == [0, 1, 2]
    assert sorted(r_history.history) == sorted(p_history.history)
    for key, values in p_history.history.items():
        assert r_history.history[key] == pytest.approx(values, rel=1e-5), key
    # Callback state came back from the coordinator actor into the driver's objects.
    assert (r_stopper.stopped_epoch, r_stopper.best_epoch) == (2, 0)
    assert (p_stopper.stopped_epoch, p_stopper.best_epoch) == (2, 0)
    for rank in range(2):
        p_final, r_final = p_reports[rank]["final"], r_reports[rank]["final"]
        assert r_final["applied"] == p_final["applied"]
        assert r_final["learning_rate"] == pytest.approx(p_final["learning_rate"])
        assert r_history.worker_reports[rank]["applied"] == p_final["applied"]
        # Restored to the weights of epoch 0 on every worker, on both backends.
        assert r_final["weights_sha256"] == r_reports[rank]["digests"][0]
        assert p_final["weights_sha256"] == p_reports[rank]["digests"][0]
        assert r_reports[rank]["steps"] == p_reports[rank]["steps"]


def test_worker_exception_carries_rank_and_traceback(ray_cluster, no_leaked_actors, tmp_path):
    with pytest.raises(distcb.WorkerLostError) as info:
        distcb.run(
            tiny_keras3,
            num_workers=2,
            kwargs={"epochs": 50, "raise_at_epoch": 1},
            run_dir=str(tmp_path),
            config=FAST,
            backend="ray",
        )
    assert info.value.rank == 1
    assert "boom at epoch 1" in str(info.value)
    assert "Traceback" in (info.value.traceback_text or "")


def test_worker_actor_killed_mid_epoch_is_named_and_the_others_stop(
    ray_cluster, no_leaked_actors, tmp_path
):
    started = time.monotonic()
    with pytest.raises(distcb.WorkerLostError, match=r"^rank 1 ") as info:
        distcb.run(
            killed_mid_epoch,
            num_workers=2,
            kwargs={"epochs": 50, "kill_epoch": 2, "kill_batch": 3},
            run_dir=str(tmp_path),
            config=FAST,
            backend="ray",
        )
    assert info.value.rank == 1
    assert "actor died" in str(info.value)
    assert time.monotonic() - started < 60
    # The survivor left fit at the end of the epoch it was in, with the job's error.
    with open(os.path.join(tmp_path, "rank-0.json")) as handle:
        survivor = json.load(handle)
    assert len(survivor["steps"]) == 3
    assert "rank 1 " in survivor["job_error"]
    assert survivor["exit_code"] == 1  # the survivor's fit says the job failed, no "retry me"


def test_a_killed_worker_actor_restarts_the_job_exactly(ray_cluster, no_leaked_actors, tmp_path):
    from tests.helpers import resume_job

    def job(run_dir, faults):
        os.makedirs(run_dir, exist_ok=True)
        chain = resume_job.callbacks(str(run_dir))
        history = distcb.run(
            resume_job.train,
            num_workers=2,
            args=(str(run_dir), faults),
            callbacks=chain,
            run_dir=str(run_dir),
            max_restarts=1,
            config=distcb.Config(**resume_job.FAST),
            backend="ray",
            cpus_per_worker=0.5,
        )
        with open(run_dir / "log.csv", "rb") as handle:
            csv = handle.read()
        return history, chain[1], csv

    base, base_stop, base_csv = job(tmp_path / "uninterrupted", [])
    fault = {"name": "ray", "rank": 1, "epoch": 4, "batch": 2, "signal": "KILL"}
    after, after_stop, after_csv = job(tmp_path / "killed", [fault])
    assert after.history == base.history
    assert after.epoch == base.epoch
    assert (after_stop.stopped_epoch, after_stop.best_epoch) == (
        base_stop.stopped_epoch,
        base_stop.best_epoch,
    )
    assert [(d["kind"], d["at"]) for d in after.decisions] == [
        (d["kind"], d["at"]) for d in base.decisions
    ]
    assert after_csv == base_csv
    for rank in (0, 1):
        assert (
            after.worker_reports[rank]["weights_sha256"]
            == base.worker_reports[rank]["weights_sha256"]
        )
        assert after.worker_reports[rank]["resumed_after"] == 3
