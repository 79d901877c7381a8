"""`distcb launch --max-restarts N`: an ordinary script (tests/launch/scripts/resume_script.py,
the deterministic job of tests/helpers/resume_job.py) whose rank 1 SIGKILLs itself once ends
exactly as the uninterrupted run: History, CSV, best checkpoint and every rank's final
weights; and the launcher says what it recovered from, in one line."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "launch", "scripts", "resume_script.py")
FAST = json.dumps({"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 4.0, "stop_timeout_s": 20.0})


def launch(run_dir: str, *options: str, faults: str = "[]") -> tuple[int, str]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "distcb",
            "launch",
            "--nproc-per-node",
            "2",
            "--run-dir",
            run_dir,
            "--history",
            os.path.join(run_dir, "history.json"),
            "--config",
            FAST,
            *options,
            SCRIPT,
            run_dir,
            faults,
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"),
        cwd=ROOT,
        timeout=500,
    )
    return done.returncode, done.stdout + done.stderr


def outcome(run_dir: str) -> dict[str, Any]:
    def read(name: str) -> bytes:
        with open(os.path.join(run_dir, name), "rb") as handle:
            return handle.read()

    history = json.loads(read("history.json"))
    reports = {r: json.loads(read(f"report-{r}.json")) for r in (0, 1)}
    return {
        "epochs": history["epoch"],
        "history": history["history"],
        "csv": read("log.csv"),
        "ckpt": hashlib.sha256(read("best.weights.h5")).hexdigest(),
        "weights": {r: rep["weights"] for r, rep in reports.items()},
        "resumed_after": {r: rep["resumed_after"] for r, rep in reports.items()},
    }


def test_a_killed_worker_restarts_the_script_job_exactly(tmp_path):
    plain_dir, faulty_dir = str(tmp_path / "plain"), str(tmp_path / "faulty")
    os.makedirs(plain_dir)
    os.makedirs(faulty_dir)
    code, output = launch(plain_dir, "--max-restarts", "1")
    assert code == 0, output[-4000:]
    reference = outcome(plain_dir)
    assert 6 < len(reference["epochs"]) < 20  # EarlyStopping stopped it after the fault's epoch
    assert "recovered from" not in output

    kill = [{"name": "k", "rank": 1, "epoch": 5, "batch": 2, "signal": "KILL"}]
    code, output = launch(faulty_dir, "--max-restarts", "1", faults=json.dumps(kill))
    assert code == 0, output[-4000:]
    result = outcome(faulty_dir)
    for key in ("epochs", "history", "csv", "ckpt", "weights"):
        assert result[key] == reference[key], f"{key} differs from the uninterrupted run"
    # Both ranks started again from the barrier of epoch 4 (0-based), the last one committed.
    assert result["resumed_after"] == {0: 4, 1: 4}
    assert reference["resumed_after"] == {0: None, 1: None}
    summary = [x for x in output.splitlines() if x.startswith("recovered from")]
    assert len(summary) == 1, output[-4000:]
    # The epoch 1-based, as the progress line counts.
    assert summary[0] == "recovered from 1 failure: rank 1 was killed by signal SIGKILL at epoch 6"


def test_restarts_need_a_run_dir_and_one_node(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "distcb", "launch", "--max-restarts", "1", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2
    assert "--max-restarts and --resume need --run-dir DIR" in done.stderr
