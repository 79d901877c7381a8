"""Keras 3 `fit` on the JAX route (`keras_distribution=True`) computes what one process does:
examples/moons_jax.py, 2 JAX processes (CPU, gloo collectives) with distcb's
EarlyStopping and ModelCheckpoint on the coordinator, against the seed's run in one plain
Keras 3 JAX process with Keras's own callbacks (tests/helpers/moons_reference.py --jax,
run by the test at the same time).

Each worker feeds every 2nd sample of the seed's batch (15 + 15 of 30, 35 + 35 of the 70
validation samples); Keras assembles the global batch, so the step is the full batch's.
Tolerance, measured (this test's run, 137 epochs): the two runs add the same float32
numbers in another order (a global batch assembled from two shards); loss and val_loss
agree within 3.6e-7 relative. The test allows 5e-6, about 14x the gap and below the
3.4e-5 margin by which val_loss at epoch 116 stays the best (an early stop at another
epoch fails it). Accuracies are counts over 30 and 70 samples and must be equal.

`distcb launch --keras-distribution` runs an ordinary script (tests/launch/scripts/jax_fit.py)
the same way: one JAX job, the coordinator's decisions on every process.
"""

from __future__ import annotations

import io
import math
import os
import re
import sys

import pytest

from tests.helpers.moons_reference import EXAMPLES, Reference

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REL_TOL = 5e-6
# val_loss is lowest at epoch 116 (0-based) in this run, 3.4e-5 relative below the 20
# epochs after it: EarlyStopping(patience=20) stops at epoch 136 in both runs.
PATIENCE = 20
MAX_EPOCHS = 200


def run_jax_job(tmp_path, out: io.StringIO):
    sys.path.insert(0, EXAMPLES)  # to import the example here; the workers get it from `env`
    try:
        import moons_jax
    finally:
        sys.path.remove(EXAMPLES)
    import distcb
    from distcb.callbacks import EarlyStopping, ModelCheckpoint

    env = {"PYTHONPATH": os.pathsep.join([EXAMPLES, os.environ.get("PYTHONPATH", "")])}
    return distcb.run(
        moons_jax.train,
        num_workers=2,
        keras_distribution=True,
        kwargs={"epochs": MAX_EPOCHS, "show_shards": True},
        callbacks=[
            EarlyStopping(monitor="val_loss", mode="min", patience=PATIENCE),
            ModelCheckpoint(
                str(tmp_path / "best_model.keras"),
                monitor="val_accuracy",
                mode="max",
                save_best_only=True,
            ),
        ],
        env=env,
        output=out,
    )


def shards(output: str) -> dict[tuple[int, str], list[int]]:
    """(rank, "trains" | "validates") -> the sample indices that worker fed `fit`."""
    found = {}
    for rank, what, indices in re.findall(
        r"worker (\d) (trains|validates) on samples \[([\d, ]*)\]", output
    ):
        found[(int(rank), what)] = [int(i) for i in indices.split(",")]
    return found


def saved_model_accuracy(path) -> float:
    """The saved model's accuracy on the 70 validation samples, in a Keras 3 JAX process."""
    import json
    import subprocess

    code = (
        "import json, os, sys\n"
        "os.environ['KERAS_BACKEND'] = 'jax'\n"
        f"sys.path.insert(0, {EXAMPLES!r})\n"
        "import keras\n"
        "from moons_data import split\n"
        "_, _, x, y = split()\n"
        f"model = keras.models.load_model({str(path)!r})\n"
        "print(json.dumps(model.evaluate(x, y, verbose=0)[1]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return float(json.loads(done.stdout.strip().splitlines()[-1]))


def test_two_jax_processes_equal_one_including_the_early_stop_and_the_saved_model(tmp_path):
    out = io.StringIO()
    with Reference(tmp_path, MAX_EPOCHS, patience=PATIENCE, jax=True) as running:
        history = run_jax_job(tmp_path, out)
        single = running.result()
    output = out.getvalue()

    # What each worker really fed fit: disjoint halves that make up the whole batch.
    fed = shards(output)
    print({key: value for key, value in sorted(fed.items())})
    assert fed[(0, "trains")] == list(range(0, 30, 2))
    assert fed[(1, "trains")] == list(range(1, 30, 2))
    assert fed[(0, "validates")] == list(range(30, 100, 2))
    assert fed[(1, "validates")] == list(range(31, 100, 2))

    # EarlyStopping stopped both runs at the same epoch, every process with it.
    assert single["epochs"] < MAX_EPOCHS  # it did stop early
    assert len(history.epoch) == single["epochs"]
    assert {r["epochs_run"] for r in history.worker_reports.values()} == {single["epochs"]}

    # Per-epoch logs: loss within the measured tolerance, accuracies equal.
    ours, theirs = history.history, single["history"]
    gaps = []
    for key in ("loss", "val_loss"):
        for epoch, (a, b) in enumerate(zip(theirs[key], ours[key], strict=True)):
            gaps.append(abs(a - b) / abs(a))
            assert math.isclose(a, b, rel_tol=REL_TOL), (key, epoch, a, b)
    print(f"largest relative gap in loss/val_loss: {max(gaps):.2g}")
    for key in ("accuracy", "val_accuracy"):
        assert ours[key] == theirs[key], key

    # One writer: the chief's checkpoint holds the best epoch's model and scores the logged
    # best, as the single process's own ModelCheckpoint file does.
    logged = max(ours["val_accuracy"])
    assert saved_model_accuracy(tmp_path / "best_model.keras") == pytest.approx(logged, abs=1e-7)
    assert single["test_accuracy_of_saved"] == pytest.approx(logged, abs=1e-7)
    saves = {rank: report["saved"] for rank, report in history.worker_reports.items()}
    assert saves[1] == []
    assert saves[0]
    assert set(saves[0]) == {str(tmp_path / "best_model.keras")}


LAUNCH_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "jax_fit.py")


def launch_jax(tmp_path, nproc: int, epochs: int) -> tuple[dict, list[dict]]:
    import json
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    history_path = tmp_path / f"history-{nproc}.json"
    done = subprocess.run(
        [sys.executable, "-m", "distcb", "launch", "--nproc-per-node", str(nproc)]
        + ["--keras-distribution", "--history", str(history_path), LAUNCH_SCRIPT, str(epochs)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="3"),
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    workers = [json.loads(line) for line in re.findall(r"jax_fit result (.*)$", output, re.M)]
    return json.loads(history_path.read_text()), sorted(workers, key=lambda w: w["rank"])


def test_distcb_launch_keras_distribution_trains_one_model_on_jax(tmp_path):
    epochs = 6
    history, workers = launch_jax(tmp_path, 2, epochs)
    # Both processes joined one JAX job on Keras's JAX backend and logged the job's losses.
    assert [(w["rank"], w["processes"], w["backend"]) for w in workers] == [
        (0, 2, "jax"),
        (1, 2, "jax"),
    ]
    for worker in workers:
        assert worker["loss"] == history["history"]["loss"]
    # The coordinator's ReduceLROnPlateau(min_delta=1) halves the rate at every epoch end from
    # the second on (logged before each cut), on every process at once.
    expected = [0.001, *[0.001 * 0.5**e for e in range(epochs - 1)]]
    assert history["history"]["learning_rate"] == pytest.approx(expected)
    final = [w["final_learning_rate"] for w in workers]
    assert final == pytest.approx([0.001 * 0.5 ** (epochs - 1)] * 2)
