"""distcb.tune: each trial a distcb job; ASHA stops trials and their workers with them."""

from __future__ import annotations

import json
import os
import time

import pytest

import distcb.tune
from tests.helpers.ray_cluster import distcb_actors_alive
from tests.helpers.ray_fns import tune_trainable

pytestmark = pytest.mark.slow
EPOCHS = 4


def tuner(tmp_path, param_space, **tune_config):
    from ray import tune

    return tune.Tuner(
        tune.with_resources(tune_trainable, distcb.tune.placement(2, cpus_per_worker=0.5)),
        param_space={"out": str(tmp_path / "trials"), "epochs": EPOCHS, "width": 8, **param_space},
        tune_config=tune.TuneConfig(metric="loss", mode="min", **tune_config),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    )


def wait_for_no_distcb_actors(ray, timeout_s=15.0):
    deadline = time.monotonic() + timeout_s
    while distcb_actors_alive(ray) and time.monotonic() < deadline:
        time.sleep(0.2)
    return distcb_actors_alive(ray)


def test_asha_stops_trials_and_their_workers_reports_match_history(ray_cluster, tmp_path):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    # Two good learning rates run first; the two hopeless ones then lose at the first rung.
    results = tuner(
        tmp_path,
        {"lr": tune.grid_search([0.5, 0.3, 1e-5, 1e-6])},
        scheduler=ASHAScheduler(max_t=EPOCHS + 1, grace_period=1, reduction_factor=3),
        max_concurrent_trials=2,
    ).fit()
    assert results.num_errors == 0
    completed, stopped = [], []
    for result in results:
        frame = result.metrics_dataframe
        trial_dir = tmp_path / "trials" / result.metrics["trial_id"]
        history_path = trial_dir / "history.json"
        (completed if history_path.exists() else stopped).append((result, frame, history_path))
    assert completed, "no trial ran to the end"
    assert stopped, "ASHA stopped no trial"
    # The hopeless trials lost at a rung; each stopped trial ran fewer epochs.
    assert {r.config["lr"] for r, _, _ in stopped} >= {1e-5, 1e-6}
    assert 0.5 in {r.config["lr"] for r, _, _ in completed}
    for _, frame, _ in stopped:
        assert len(frame) < EPOCHS
    for result, frame, history_path in completed:
        with open(history_path) as handle:
            history = json.load(handle)
        # What Tune received is the aggregated History, epoch by epoch.
        assert list(frame["epoch"]) == history["epoch"] == list(range(EPOCHS))
        for key, values in history["history"].items():
            assert list(frame[key]) == pytest.approx(values, rel=1e-12), key
        # ModelCheckpoint saved every epoch: the last report carries that file.
        with result.checkpoint.as_directory() as directory:
            restored = distcb.tune.RestoredCheckpoint.load(directory)
            assert restored.epoch == EPOCHS - 1
            assert [os.path.basename(p) for p in restored.files] == ["model.weights.h5"]
            assert os.path.getsize(restored.path) > 0
    # Every trial's coordinator and workers are gone, stopped trials' included.
    assert wait_for_no_distcb_actors(ray_cluster) == []


def test_a_failed_trial_resumes_from_its_tune_checkpoint(ray_cluster, tmp_path):
    from ray import tune

    marker = tmp_path / "failed-once"
    results = tune.Tuner(
        tune.with_resources(tune_trainable, distcb.tune.placement(2, cpus_per_worker=0.5)),
        param_space={
            "out": str(tmp_path / "trials"),
            "epochs": EPOCHS,
            "width": 8,
            "lr": 0.3,
            "fail_marker": str(marker),
            "fail_epoch": 2,
        },
        tune_config=tune.TuneConfig(metric="loss", mode="min"),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "tune"),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    ).fit()
    assert marker.exists()
    assert results.num_errors == 0
    (result,) = list(results)
    assert result.metrics["epoch"] == EPOCHS - 1
    trial_dir = tmp_path / "trials" / result.metrics["trial_id"]
    starts = [json.loads(p.read_text()) for p in trial_dir.glob("start-*.json")]
    # First attempt from scratch, second from the checkpoint of epoch 1, on both workers.
    assert sorted(
        s["restored_epoch"] if s["restored_epoch"] is not None else -1 for s in starts
    ) == [-1, -1, 1, 1]
    with open(trial_dir / "history.json") as handle:
        history = json.load(handle)
    assert history["epoch"] == [0, 1]  # distcb counts the resumed run's own epochs
    assert wait_for_no_distcb_actors(ray_cluster) == []


def test_a_one_worker_trial_runs_its_job_in_the_trial_process(ray_cluster, tmp_path):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from tests.helpers.ray_fns import tune_thread_trainable

    results = tune.Tuner(
        tune.with_resources(tune_thread_trainable, {"cpu": 1}),
        param_space={
            "out": str(tmp_path / "trials"),
            "epochs": EPOCHS,
            "width": 8,
            "lr": tune.grid_search([0.5, 0.3, 1e-5, 1e-6]),
        },
        tune_config=tune.TuneConfig(
            metric="loss",
            mode="min",
            scheduler=ASHAScheduler(max_t=EPOCHS + 1, grace_period=1, reduction_factor=3),
            max_concurrent_trials=2,
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    ).fit()
    assert results.num_errors == 0
    completed = stopped = 0
    for result in results:
        trial_dir = tmp_path / "trials" / result.metrics["trial_id"]
        history_path = trial_dir / "history.json"
        if not history_path.exists():  # ASHA stopped it: fewer epochs reported
            assert len(result.metrics_dataframe) < EPOCHS
            stopped += 1
            continue
        completed += 1
        history = json.loads(history_path.read_text())
        # The worker ran in the trial process: no actor of its own.
        (start,) = trial_dir.glob("start-0-*.json")
        assert start.name == f"start-0-{history['pid']}.json"
        frame = result.metrics_dataframe
        assert list(frame["epoch"]) == history["epoch"] == list(range(EPOCHS))
        for key, values in history["history"].items():
            assert list(frame[key]) == pytest.approx(values, rel=1e-12), key
        with result.checkpoint.as_directory() as directory:
            assert distcb.tune.RestoredCheckpoint.load(directory).epoch == EPOCHS - 1
    assert completed, "no trial ran to the end"
    assert stopped, "ASHA stopped no trial"
    assert wait_for_no_distcb_actors(ray_cluster) == []


def test_a_restored_trial_goes_on_from_the_distcb_journal(ray_cluster, tmp_path):
    """A worker actor SIGKILLed mid-epoch fails the trial (no restarts inside it); Tune
    restores the trial, whose `run(resume=True)` goes on from the journal in its `run_dir`:
    the trial ends as the uninterrupted one does, callbacks' state included."""
    from ray import tune

    from tests.helpers.ray_fns import tune_journal_trainable

    def trial(name: str, faults: list[dict]) -> tuple[dict, int, bytes]:
        run_dir = tmp_path / name
        results = tune.Tuner(
            tune.with_resources(
                tune_journal_trainable, distcb.tune.placement(2, cpus_per_worker=0.5)
            ),
            param_space={"run_dir": str(run_dir), "faults": faults},
            tune_config=tune.TuneConfig(metric="val_loss", mode="min"),
            run_config=tune.RunConfig(
                storage_path=str(tmp_path / f"tune-{name}"),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=1),
            ),
        ).fit()
        assert results.num_errors == 0
        attempts = len((run_dir / "attempts").read_text().split())
        result = json.loads((run_dir / "result.json").read_text())
        # What each rank's last attempt reported: its final weights, the barrier it resumed after.
        result["reports"] = [
            json.loads((run_dir / f"report-{rank}.json").read_text()) for rank in (0, 1)
        ]
        return result, attempts, (run_dir / "log.csv").read_bytes()

    base, base_attempts, base_csv = trial("uninterrupted", [])
    fault = {"name": "tune", "rank": 1, "epoch": 4, "batch": 2, "signal": "KILL"}
    after, after_attempts, after_csv = trial("killed", [fault])
    assert (base_attempts, after_attempts) == (1, 2)
    # Exercised: a stop by EarlyStopping, learning-rate reductions (their state resumed).
    assert base["stopped_epoch"] > 4
    assert len(set(base["history"]["learning_rate"])) >= 2
    # The restored trial went on from the journal (a fresh start of this deterministic job
    # would end the same, so this is what tells them apart), after a barrier before epoch 4.
    assert [r["resumed_after"] for r in base["reports"]] == [None, None]
    [resumed_after] = {r["resumed_after"] for r in after["reports"]}  # one barrier for both
    assert resumed_after is not None, after["reports"]
    assert 0 <= resumed_after < 4, after["reports"]
    for result in (base, after):
        for report in result["reports"]:
            del report["resumed_after"]
    assert after == base  # History float-equal, stopped and best epochs, final weights
    assert after_csv == base_csv
    assert wait_for_no_distcb_actors(ray_cluster) == []
