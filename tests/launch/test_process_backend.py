"""Real worker processes, real TensorFlow: decisions reach every worker, failures are named."""

from __future__ import annotations

import json
import os
import time

import pytest

import distcb
from distcb.callbacks import Callback, EarlyStopping, LearningRateScheduler, ModelCheckpoint
from tests.helpers.worker_fns import tiny_keras3

pytestmark = pytest.mark.slow
FAST = distcb.Config(heartbeat_interval_s=0.2, heartbeat_timeout_s=10.0, stop_timeout_s=10.0)


class BatchLosses(Callback):
    """The seed's LossHistory, on the coordinator: aggregated batch losses."""

    def on_train_begin(self, logs=None):
        self.losses = []

    def on_batch_end(self, batch, logs=None):
        self.losses.append(logs["loss"])


@pytest.mark.parametrize("flavour", ["keras3", "tf_keras"])
def test_stop_lr_and_restore_reach_every_worker(tmp_path, read_reports, flavour):
    schedule = LearningRateScheduler(lambda epoch, lr: 0.05 / (epoch + 1))
    # No epoch improves `loss` by more than 10: best is epoch 0, stop after `patience` epochs.
    stopper = EarlyStopping(monitor="loss", min_delta=10.0, patience=2, restore_best_weights=True)
    losses = BatchLosses()
    history = distcb.run(
        tiny_keras3,
        num_workers=2,
        kwargs={"epochs": 10, "flavour": flavour},
        callbacks=[schedule, stopper, losses],
        run_dir=str(tmp_path),
        config=FAST,
    )
    assert history.epoch == [0, 1, 2]
    assert stopper.stopped_epoch == 2
    assert stopper.best_epoch == 0
    reports = read_reports(tmp_path, 2)
    for rank, report in enumerate(reports):
        assert report["final"]["applied"], f"rank {rank} applied no decision"
        assert len(report["digests"]) == 3, f"rank {rank} ran {len(report['digests'])} epochs"
        # Restored to the weights it had at the end of epoch 0, not those of epoch 2.
        assert report["final"]["weights_sha256"] == report["digests"][0] != report["digests"][2]
        assert report["final"]["learning_rate"] == pytest.approx(0.05 / 3, rel=1e-6)
    assert history.worker_reports[1]["learning_rate"] == pytest.approx(0.05 / 3, rel=1e-6)
    assert history.history["learning_rate"] == pytest.approx([0.05, 0.025, 0.05 / 3], rel=1e-6)
    # 64 samples in batches of 16: 4 merged steps per epoch, 3 epochs.
    assert len(losses.losses) == 12
    assert all(isinstance(v, float) and v > 0 for v in losses.losses)


def test_batch_stop_lands_on_the_same_step_on_every_worker(tmp_path, read_reports):
    class StopAtBatch(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 2:
                self.model.stop_training = True

    config = FAST.replace(window_steps=3)
    history = distcb.run(
        tiny_keras3,
        num_workers=2,
        kwargs={"epochs": 5, "batch_size": 2},
        callbacks=[StopAtBatch()],
        run_dir=str(tmp_path),
        config=config,
    )
    assert history.epoch == [0, 1]
    for report in read_reports(tmp_path, 2):
        # Effect step E = 2 + 3 + 1 = 6: the last step run in epoch 1 is 6 on every worker.
        assert report["steps"][1][-1] == 6
        assert len(report["steps"]) == 2


def test_only_the_chief_writes_checkpoints_and_keras_loads_them(tmp_path, read_reports):
    import keras

    path = str(tmp_path / "ckpt" / "model-{epoch:02d}.keras")
    distcb.run(
        tiny_keras3,
        num_workers=2,
        kwargs={"epochs": 3},
        callbacks=[ModelCheckpoint(path, monitor="loss", save_best_only=False)],
        run_dir=str(tmp_path),
        config=FAST,
    )
    files = sorted(os.listdir(tmp_path / "ckpt"))
    assert files == ["model-01.keras", "model-02.keras", "model-03.keras"]
    chief, other = read_reports(tmp_path, 2)
    assert [os.path.basename(p) for p in chief["final"]["saved"]] == files
    assert other["final"]["saved"] == []
    model = keras.models.load_model(tmp_path / "ckpt" / "model-03.keras")
    assert model.count_params() == 4 * 8 + 8 + 8 + 1


def test_sigkilled_worker_is_named_and_the_others_stop(tmp_path):
    started = time.monotonic()
    with pytest.raises(distcb.WorkerLostError, match=r"^rank 1 ") as info:
        distcb.run(
            tiny_keras3,
            num_workers=2,
            kwargs={"epochs": 50, "kill_at_epoch": 2},
            run_dir=str(tmp_path),
            config=FAST,
        )
    assert info.value.rank == 1
    assert "SIGKILL" in str(info.value) or "disconnected" in str(info.value)
    assert time.monotonic() - started < 120


def test_worker_exception_carries_rank_and_traceback(tmp_path):
    with pytest.raises(distcb.WorkerLostError) as info:
        distcb.run(
            tiny_keras3,
            num_workers=2,
            kwargs={"epochs": 50, "raise_at_epoch": 1},
            run_dir=str(tmp_path),
            config=FAST,
        )
    assert info.value.rank == 1
    assert "boom at epoch 1" in str(info.value)
    assert "Traceback" in (info.value.traceback_text or "")


def test_each_worker_gets_its_gpus_tf_config_and_threads(tmp_path):
    from tests.helpers.worker_fns import report_environment

    distcb.run(
        report_environment,
        num_workers=2,
        run_dir=str(tmp_path),
        config=FAST,
        tf_config=True,
        gpus_per_worker=2,
        threads_per_worker=1,
    )
    envs = [json.loads((tmp_path / f"env-{rank}.json").read_text()) for rank in range(2)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0,1", "2,3"]
    assert [(e["rank"], e["world_size"], e["threads"]) for e in envs] == [(0, 2, "1"), (1, 2, "1")]
    configs = [json.loads(e["TF_CONFIG"]) for e in envs]
    assert configs[0]["cluster"] == configs[1]["cluster"]
    assert len(set(configs[0]["cluster"]["worker"])) == 2
    assert [c["task"] for c in configs] == [
        {"type": "worker", "index": 0},
        {"type": "worker", "index": 1},
    ]
