"""backend="thread": workers as threads of the calling process, the same coordinator, the
in-process transport. Real Keras 3 training on both sides of every comparison."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

import distcb
from distcb.callbacks import EarlyStopping, LearningRateScheduler
from tests.helpers.moons_fns import moons_keras3
from tests.helpers.worker_fns import tiny_keras3

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = distcb.Config(heartbeat_interval_s=0.2, heartbeat_timeout_s=10.0, stop_timeout_s=10.0)
EPOCHS = 12


def moons_callbacks():
    # Decisions that change the training: the LR halves from epoch 4 on; no early stop
    # (min_delta=0 on a loss that keeps falling), but EarlyStopping still runs each epoch.
    return [
        LearningRateScheduler(lambda epoch, lr: 0.001 if epoch < 4 else 0.0005),
        EarlyStopping(monitor="val_loss", patience=50),
    ]


def test_moons_in_threads_gives_the_history_of_the_process_backend():
    by_process = distcb.run(
        moons_keras3, num_workers=1, kwargs={"epochs": EPOCHS}, callbacks=moons_callbacks()
    )
    by_thread = distcb.run(
        moons_keras3,
        num_workers=1,
        backend="thread",
        kwargs={"epochs": EPOCHS},
        callbacks=moons_callbacks(),
    )
    assert by_thread.epoch == by_process.epoch == list(range(EPOCHS))
    assert (
        sorted(by_thread.history)
        == sorted(by_process.history)
        == [
            "accuracy",
            "learning_rate",
            "loss",
            "val_accuracy",
            "val_loss",
        ]
    )
    for key, values in by_process.history.items():
        assert by_thread.history[key] == pytest.approx(values, rel=1e-6, abs=1e-7), key
    assert by_thread.history["learning_rate"][3:5] == pytest.approx([0.001, 0.0005])
    assert by_thread.history["loss"][-1] < by_thread.history["loss"][0]  # it trained
    assert (
        by_thread.worker_reports[0]["weights_sha256"]
        == by_process.worker_reports[0]["weights_sha256"]
    )
    # Nothing of the job is left running in this process.
    assert not [t.name for t in threading.enumerate() if t.name.startswith("distcb-worker")]


def test_two_worker_threads_get_their_own_rank_and_the_same_decisions(tmp_path, read_reports):
    stopper = EarlyStopping(monitor="loss", min_delta=10.0, patience=2)
    history = distcb.run(
        tiny_keras3,
        num_workers=2,
        backend="thread",
        kwargs={"epochs": 10},
        callbacks=[stopper],
        run_dir=str(tmp_path),
        config=FAST,
    )
    assert history.epoch == [0, 1, 2]
    reports = read_reports(tmp_path, 2)  # each thread wrote its own rank's file
    for report in reports:
        assert len(report["digests"]) == 3  # both stopped after epoch 2
    # Their data differ by rank (tests/helpers/worker_fns.py), so their weights do.
    assert reports[0]["final"]["weights_sha256"] != reports[1]["final"]["weights_sha256"]


def test_a_raising_worker_thread_is_named_and_its_exception_is_the_cause(tmp_path):
    with pytest.raises(distcb.WorkerLostError, match="boom at epoch 1") as raised:
        distcb.run(
            tiny_keras3,
            num_workers=2,
            backend="thread",
            kwargs={"epochs": 5, "raise_at_epoch": 1},
            run_dir=str(tmp_path),
            config=FAST,
        )
    assert raised.value.rank == 1
    cause = raised.value.__cause__
    assert isinstance(cause, RuntimeError)
    assert str(cause) == "boom at epoch 1"
    assert cause.__traceback__ is not None  # what pdb.post_mortem walks
    assert not [t.name for t in threading.enumerate() if t.name.startswith("distcb-worker")]


def test_options_threads_cannot_have_are_refused_by_name():
    with pytest.raises(
        TypeError, match=r"backend='thread' does not support the option 'tf_config'"
    ):
        distcb.run(tiny_keras3, num_workers=2, backend="thread", tf_config=True)


PDB_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import distcb

    def train():
        import keras
        import distcb.keras

        ctx = distcb.worker_context()

        def pause(epoch, logs):
            if epoch == 0:
                checked = f"rank={ctx.rank} world={ctx.world_size} loss={logs['loss'] > 0}"
                breakpoint()

        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
        x = np.ones((8, 2), "float32")
        pdb_hook = keras.callbacks.LambdaCallback(on_epoch_end=pause)
        callbacks = [distcb.keras.WorkerCallback(), pdb_hook]
        model.fit(x, x[:, :1], epochs=3, verbose=0, callbacks=callbacks)

    config = distcb.Config(heartbeat_interval_s=0.1, heartbeat_timeout_s=1.0)
    history = distcb.run(train, num_workers=1, backend="thread", config=config)
    print("epochs run:", history.epoch)
    """
)


def test_pdb_stops_a_worker_thread_mid_training_and_the_job_goes_on():
    # pdb reads this process's stdin, on the worker's thread, in the middle of fit. The
    # worker stays at the prompt for 2.5 s, past the heartbeat timeout of 1 s: its IO
    # thread keeps saying it is alive, so the coordinator does not count it as lost.
    commands = "p checked\nimport time; time.sleep(2.5)\ncontinue\n"
    done = subprocess.run(
        [sys.executable, "-c", PDB_SCRIPT],
        input=commands,
        capture_output=True,
        text=True,
        timeout=180,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", PYTHONBREAKPOINT=""),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "(Pdb)" in done.stdout
    assert "'rank=0 world=1 loss=True'" in done.stdout
    assert "epochs run: [0, 1, 2]" in done.stdout
