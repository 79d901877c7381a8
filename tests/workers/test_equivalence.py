"""Distributed training does not change the answer: examples/moons.py's 2-worker synchronous
job (tf_keras + MultiWorkerMirroredStrategy, distcb coordinator) against the seed's run in one
plain tf_keras process, run here as well (tests/workers/moons_reference.py).

Tolerance, measured (650 epochs, both runs): the two runs add the same float32 numbers in a
different order (two 15-sample halves reduced across workers against one 30-sample batch that
fit shuffles every epoch), so they agree to within 2.4e-7 relative for loss and val_loss
over the first 380 epochs; the differences then grow to 5e-4 by epoch 650 (Adam amplifies
them). The tests run 200 epochs and allow 1e-5 relative (about 40x the measured gap);
accuracies are counts over 30 and 70 samples and must be equal.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
from moons_reference import EXAMPLES, Reference

pytestmark = pytest.mark.slow
REL_TOL = 1e-5
EPOCHS = 200
# val_loss has a local minimum at epoch 114 (0-based) in this run, 1.6e-5 relative below the
# epochs after it, so EarlyStopping(patience=20) stops at epoch 134 unless the runs drift apart.
PATIENCE = 20
MAX_EPOCHS = 300


def distributed(tmp_path, epochs: int, patience: int | None = None):
    sys.path.insert(0, EXAMPLES)  # to import the example here; the workers get it from `env`
    try:
        import moons
    finally:
        sys.path.remove(EXAMPLES)
    import distcb
    from distcb.callbacks import EarlyStopping, ModelCheckpoint

    callbacks = [
        ModelCheckpoint(
            str(tmp_path / "best_model.h5"),
            monitor="val_accuracy",
            mode="max",
            save_best_only=True,
        )
    ]
    if patience is not None:
        callbacks.append(EarlyStopping(monitor="val_loss", mode="min", patience=patience))
    env = {"PYTHONPATH": os.pathsep.join([EXAMPLES, os.environ.get("PYTHONPATH", "")])}
    return distcb.run(
        moons.train,
        num_workers=2,
        tf_config=True,
        threads_per_worker=1,
        kwargs={"epochs": epochs},
        callbacks=callbacks,
        env=env,
    )


def assert_same_run(single: dict, history) -> None:
    ours = history.history
    assert len(ours["loss"]) == len(single["loss"])
    for key in ("loss", "val_loss"):
        for epoch, (a, b) in enumerate(zip(single[key], ours[key], strict=True)):
            assert math.isclose(a, b, rel_tol=REL_TOL), (key, epoch, a, b)
    for key in ("accuracy", "val_accuracy"):
        assert ours[key] == single[key], key  # float32 of the same counts


def evaluate_saved(path) -> float:
    """The saved model's accuracy on the full validation set (the 70 test samples)."""
    sys.path.insert(0, EXAMPLES)
    try:
        from moons_data import split
    finally:
        sys.path.remove(EXAMPLES)
    import tf_keras as keras

    _, _, test_x, test_y = split()
    model = keras.models.load_model(str(path))
    return float(model.evaluate(test_x, test_y, verbose=0)[1])


def test_fixed_epochs_follow_the_single_process_run(tmp_path):
    with Reference(tmp_path, EPOCHS) as running:
        history = distributed(tmp_path, EPOCHS)
        single = running.result()
    assert single["epochs"] == len(history.epoch) == EPOCHS
    assert_same_run(single["history"], history)
    assert {r["epochs_run"] for r in history.worker_reports.values()} == {EPOCHS}
    # ModelCheckpoint saved at the first epoch with the best val_accuracy; the model it
    # saved scores exactly that on the whole validation set, as the single process's does.
    logged = max(history.history["val_accuracy"])
    assert evaluate_saved(tmp_path / "best_model.h5") == pytest.approx(logged, abs=1e-7)
    assert single["test_accuracy_of_saved"] == pytest.approx(logged, abs=1e-7)


def test_early_stopping_stops_both_at_the_same_epoch(tmp_path):
    with Reference(tmp_path, MAX_EPOCHS, patience=PATIENCE) as running:
        history = distributed(tmp_path, MAX_EPOCHS, patience=PATIENCE)
        single = running.result()
    assert single["epochs"] < MAX_EPOCHS  # it did stop early
    assert len(history.epoch) == single["epochs"]
    assert {r["epochs_run"] for r in history.worker_reports.values()} == {single["epochs"]}
    assert_same_run(single["history"], history)
