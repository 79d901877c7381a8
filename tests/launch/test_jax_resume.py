"""Exact resume on the JAX route: a JAX worker SIGKILLed mid-epoch, with max_restarts=1, and
the job ends as the uninterrupted one does (tests/helpers/jax_resume_job.py: Keras 3 `fit`
on JAX across 2 processes, dropout, EarlyStopping(restore_best_weights), ReduceLROnPlateau,
ModelCheckpoint, CSVLogger).

A lost JAX process leaves its peer in a failed gloo collective and JAX's coordination
service in an error state: the restart must stop every process and start all of them
again, around a new coordination service. The test checks that it did (new processes, a
new coordination address) and that nothing hung (every run is bounded by a timeout).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import subprocess
import sys
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPARED = ("epochs", "history", "decisions", "stopped_epoch", "best_epoch", "final", "csv", "ckpt")


def run_job(run_dir: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers.jax_resume_job", run_dir, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"),
        cwd=ROOT,
        timeout=300,  # a hang (a process left in a collective) fails here
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def outcome(run_dir: str, output: str) -> dict[str, Any]:
    line = [line for line in output.splitlines() if line.startswith("RESULT ")][-1]
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    with open(os.path.join(run_dir, "log.csv"), "rb") as handle:
        result["csv"] = handle.read()
    with open(os.path.join(run_dir, "best.weights.h5"), "rb") as handle:
        result["ckpt"] = hashlib.sha256(handle.read()).hexdigest()
    result["final"] = {rank: r["weights_sha256"] for rank, r in result["reports"].items()}
    result["resumed_after"] = {rank: r["resumed_after"] for rank, r in result["reports"].items()}
    processes = []
    for path in glob.glob(os.path.join(run_dir, "process-*.json")):
        rank, pid = os.path.basename(path)[len("process-") : -len(".json")].split("-")
        with open(path) as handle:
            processes.append((int(rank), int(pid), json.load(handle)["jax"]))
    result["processes"] = processes
    return result


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run_dir = str(tmp_path_factory.mktemp("uninterrupted"))
    result = outcome(run_dir, run_job(run_dir, "--max-restarts", "1"))
    # The job exercises what resume must carry over: a stop, LR reductions, a restore.
    assert 0 < result["stopped_epoch"] < 19
    assert len(set(result["history"]["learning_rate"])) >= 2
    assert [d[0] for d in result["decisions"]][-1] == "restore"
    assert result["resumed_after"] == {"0": None, "1": None}
    assert len(result["processes"]) == 2
    # One model: both processes end with the same weights.
    assert result["final"]["0"] == result["final"]["1"]
    return result


def test_a_jax_worker_killed_mid_epoch_restarts_every_process_and_ends_exactly(
    tmp_path, uninterrupted
):
    epoch = random.Random(23).randrange(2, uninterrupted["stopped_epoch"] - 1)
    print(f"SIGKILL of rank 1 in epoch {epoch}, batch 2")
    run_dir = str(tmp_path)
    fault = {"name": "a", "rank": 1, "epoch": epoch, "batch": 2, "signal": "KILL"}
    output = run_job(run_dir, "--max-restarts", "1", "--faults", json.dumps([fault]))
    result = outcome(run_dir, output)
    for key in COMPARED:
        assert result[key] == uninterrupted[key], f"{key} differs from the uninterrupted run"
    assert result["resumed_after"] == {"0": epoch - 1, "1": epoch - 1}
    # The survivor left its failed collective and exited at once (143, "retry me"), instead
    # of waiting in JAX's shutdown barrier for the dead peer while still connected.
    assert "training raised after the job began to restart" in output
    assert "did not reach on_train_end" not in output
    # Every process of the first attempt was replaced, around a new coordination service.
    processes = result["processes"]
    assert sorted(rank for rank, _, _ in processes) == [0, 0, 1, 1]
    addresses = {address for _, _, address in processes}
    assert len(addresses) == 2, processes
    for address in addresses:
        assert sorted(rank for rank, _, a in processes if a == address) == [0, 1]
    assert len({pid for _, pid, _ in processes}) == 4
