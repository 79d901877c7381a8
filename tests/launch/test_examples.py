"""The examples run end to end, as a user runs them (small epoch counts)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from tests.helpers.moons_reference import Reference

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_example(
    name: str, *args: str, timeout: float = 240, stderr: list[str] | None = None
) -> str:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    if stderr is not None:
        stderr.append(done.stderr)
    return done.stdout


def keras_stop_epoch(values: list[float], patience: int, epochs: int) -> int:
    """The number of epochs Keras's EarlyStopping(patience, min_delta=0, mode=min) runs."""
    best, wait = math.inf, 0
    for epoch, value in enumerate(values):
        wait += 1
        if value < best:
            best, wait = value, 0
        if wait >= patience and epoch > 0:
            return epoch + 1
    return epochs


def test_moons_replicas_stops_both_replicas_and_loads_the_best_model(tmp_path):
    patience, epochs = 3, 150
    out = run_example(
        "moons_replicas.py",
        "--epochs",
        str(epochs),
        "--patience",
        str(patience),
        "--run-dir",
        str(tmp_path),
    )
    assert re.search(r"^Train: \d\.\d{3}, Test: \d\.\d{3}$", out, re.M), out[-2000:]
    ran = int(re.search(r"^epochs=(\d+)", out, re.M).group(1))
    val_loss = json.loads(re.search(r"^val_loss: (.*)$", out, re.M).group(1))
    ends = re.search(r"^epochs run by each worker: \{0: (\d+), 1: (\d+)\}$", out, re.M)
    # EarlyStopping stopped where Keras's rule says, on the aggregated val_loss, and it
    # stopped both replicas there.
    assert ran == len(val_loss) == keras_stop_epoch(val_loss, patience, epochs)
    assert ran < epochs, "EarlyStopping never fired: the test checks nothing"
    assert ends is not None, out[-3000:]
    assert int(ends.group(1)) == int(ends.group(2)) == ran
    assert os.path.exists(tmp_path / "best_model.keras")


def test_moons_sync_gives_the_single_process_answer(tmp_path):
    # `make run` as a user runs it, next to the seed in one plain tf_keras process.
    errors: list[str] = []
    with Reference(tmp_path, 4000, patience=200) as running:
        out = run_example(
            "moons.py",
            "--show-shards",
            "--run-dir",
            str(tmp_path / "run"),
            timeout=900,
            stderr=errors,
        )
        single = running.result()
    # It fits a screen: at most 60 lines besides the 4 that --show-shards adds, progress
    # lines included (not a terminal here: one every few seconds), ending with the result.
    lines = out.splitlines() + errors[0].splitlines()
    shard_lines = [x for x in lines if re.search(r"worker \d (trains|validates) on samples", x)]
    assert len(shard_lines) == 4
    assert len(lines) - len(shard_lines) <= 60, "\n".join(lines)
    assert out.splitlines()[-1].startswith("Train: ")
    progress = [x for x in errors[0].splitlines() if re.match(r"^epoch \d+/4000  loss ", x)]
    assert len(progress) >= 2, errors[0]
    assert "best val_loss" in progress[-1]
    assert not [x for x in lines if "did not improve" in x]
    # The workers' TensorFlow start-up lines are dropped (the example's own `import tf_keras`
    # after the run, in this process, still prints its 3).
    assert not [x for x in lines if x.startswith("[rank") and "absl::InitializeLog" in x]
    # What each worker received: 15 + 15 training and 35 + 35 validation samples, each once.
    for kind, samples in (("trains", range(30)), ("validates", range(30, 100))):
        shards = {
            int(rank): json.loads(indices)
            for rank, indices in re.findall(rf"worker (\d) {kind} on samples (\[.*\])", out)
        }
        assert sorted(shards) == [0, 1], out[-2000:]
        assert len(shards[0]) == len(shards[1]) == len(samples) // 2
        assert sorted(shards[0] + shards[1]) == list(samples)
    # Both workers stop at the epoch the coordinator stopped the job.
    ends = re.search(r"^epochs run by each worker: \{0: (\d+), 1: (\d+)\}$", out, re.M)
    assert ends is not None, out[-2000:]
    epochs = int(re.search(r"^epochs=(\d+)", out, re.M).group(1))
    assert int(ends.group(1)) == int(ends.group(2)) == epochs
    # The seed's answer: the best model scores what the single process's does (within 0.02;
    # the runs agree to float rounding, which may move the stop by an epoch or so).
    found = re.search(r"^Train: (\d\.\d{3}), Test: (\d\.\d{3})$", out, re.M)
    assert found is not None, out[-2000:]
    print(
        f"distributed: {found.group(0)} after {epochs} epochs; single process: Train: "
        f"{single['train_accuracy_of_saved']:.3f}, Test: {single['test_accuracy_of_saved']:.3f}"
        f" after {single['epochs']} epochs"
    )
    assert abs(float(found.group(1)) - single["train_accuracy_of_saved"]) <= 0.02
    assert abs(float(found.group(2)) - single["test_accuracy_of_saved"]) <= 0.02
    assert abs(epochs - single["epochs"]) <= 10
    assert os.path.exists(tmp_path / "run" / "best_model.h5")


def test_moons_sync_keras3_stops_both_workers_together_and_loads_the_best_model(tmp_path):
    # Its numbers against the single Keras 3 process: tests/workers/test_equivalence.py.
    out = run_example(
        "moons_sync_keras3.py", "--epochs", "40", "--patience", "3", "--run-dir", str(tmp_path)
    )
    ends = re.search(r"^epochs run by each worker: \{0: (\d+), 1: (\d+)\}$", out, re.M)
    assert ends is not None, out[-2000:]
    epochs = int(re.search(r"^epochs=(\d+)", out, re.M).group(1))
    assert int(ends.group(1)) == int(ends.group(2)) == epochs <= 40
    assert re.search(r"^Train: \d\.\d{3}, Test: \d\.\d{3}$", out, re.M), out[-2000:]
    assert os.path.exists(tmp_path / "best_model.keras")


def test_loss_history_sees_aggregated_batch_losses():
    out = run_example("loss_history.py", "--workers", "2", "--epochs", "2", "--samples", "512")
    # 512 samples / batch 128 = 4 steps per epoch, 2 epochs: 8 aggregated losses, not 16.
    assert re.search(r"^8 aggregated batch losses$", out, re.M), out[-2000:]
    losses = eval(out.strip().splitlines()[-1])  # the seed prints the list
    assert len(losses) == 8
    assert all(isinstance(v, float) and v > 0 for v in losses)
