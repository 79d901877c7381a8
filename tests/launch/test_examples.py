"""The examples run end to end, as a user runs them (small epoch counts)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_example(name: str, *args: str, timeout: float = 240) -> str:
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


def test_moons_sync_both_workers_end_at_the_same_epoch(tmp_path):
    out = run_example("moons.py", "--epochs", "12", "--patience", "2", "--run-dir", str(tmp_path))
    ends = re.search(r"^epochs run by each worker: \{0: (\d+), 1: (\d+)\}$", out, re.M)
    assert ends is not None, out[-2000:]
    epochs = int(re.search(r"^epochs=(\d+)", out, re.M).group(1))
    assert int(ends.group(1)) == int(ends.group(2)) == epochs
    assert re.search(r"^Train: \d\.\d{3}, Test: \d\.\d{3}$", out, re.M)
    assert os.path.exists(tmp_path / "best_model.h5")


def test_loss_history_sees_aggregated_batch_losses():
    out = run_example("loss_history.py", "--workers", "2", "--epochs", "2", "--samples", "512")
    # 512 samples / batch 128 = 4 steps per epoch, 2 epochs: 8 aggregated losses, not 16.
    assert re.search(r"^8 aggregated batch losses$", out, re.M), out[-2000:]
    losses = eval(out.strip().splitlines()[-1])  # the seed prints the list
    assert len(losses) == 8
    assert all(isinstance(v, float) and v > 0 for v in losses)
