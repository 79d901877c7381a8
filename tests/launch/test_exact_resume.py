"""Exact resume with real processes: a job that loses a worker, its launcher, or is preempted
ends exactly as the uninterrupted job does.

The job (tests/helpers/resume_job.py) is deterministic: Keras 3 replicas, seeded, with op
determinism and dropout, EarlyStopping(restore_best_weights), ReduceLROnPlateau,
ModelCheckpoint(save_best_only), CSVLogger and TensorBoard on the coordinator. Every run
compares, with the uninterrupted run: the per-epoch History (float-equal), the decisions
with their effect points, EarlyStopping's stopped and best epochs, the final learning rate,
the final weights digest of every rank, the best checkpoint's bytes, the CSV's bytes, and
the scalar series TensorBoard reads back from the event files (every run, tag, step, value).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.helpers.tensorboard_scalars import read_scalars

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPARED = (
    "epochs",
    "history",
    "decisions",
    "stopped_epoch",
    "best_epoch",
    "final",
    "csv",
    "ckpt",
    "tensorboard",
)


def command(run_dir: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "tests.helpers.resume_job", run_dir, *args]


def environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")


def run_job(run_dir: str, *args: str, expect_ok: bool = True) -> tuple[int, str]:
    done = subprocess.run(
        command(run_dir, *args),
        capture_output=True,
        text=True,
        env=environment(),
        cwd=ROOT,
        timeout=400,
    )
    output = done.stdout + done.stderr
    if expect_ok:
        assert done.returncode == 0, output[-4000:]
    return done.returncode, output


def outcome(run_dir: str, output: str) -> dict[str, Any]:
    line = [line for line in output.splitlines() if line.startswith("RESULT ")][-1]
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    with open(os.path.join(run_dir, "log.csv"), "rb") as handle:
        result["csv"] = handle.read()
    with open(os.path.join(run_dir, "best.weights.h5"), "rb") as handle:
        result["ckpt"] = hashlib.sha256(handle.read()).hexdigest()
    result["tensorboard"] = read_scalars(os.path.join(run_dir, "tb"))
    result["final"] = {rank: r["weights_sha256"] for rank, r in result["reports"].items()}
    result["final_lr"] = {rank: r["learning_rate"] for rank, r in result["reports"].items()}
    result["resumed_after"] = {rank: r["resumed_after"] for rank, r in result["reports"].items()}
    return result


def faults(*specs: dict[str, Any]) -> str:
    return json.dumps(list(specs))


def assert_same(result: dict[str, Any], reference: dict[str, Any]) -> None:
    for key in COMPARED:
        assert result[key] == reference[key], f"{key} differs from the uninterrupted run"
    assert result["final_lr"] == reference["final_lr"]
    assert result["history"]["learning_rate"][-1] == reference["history"]["learning_rate"][-1]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run_dir = str(tmp_path_factory.mktemp("uninterrupted"))
    _, output = run_job(run_dir, "--max-restarts", "1")
    result = outcome(run_dir, output)
    # The job exercises what resume must carry over: a stop, LR reductions, a restore.
    assert 0 < result["stopped_epoch"] < 19
    assert len(set(result["history"]["learning_rate"])) >= 3
    assert [d[0] for d in result["decisions"]][-1] == "restore"
    assert result["resumed_after"] == {"0": None, "1": None}
    epochs = len(result["epochs"])
    assert [s for s, _ in result["tensorboard"]["train"]["epoch_loss"]] == list(range(epochs))
    assert len(result["tensorboard"]["train"]["batch_loss"]) == epochs * 4  # 64 / 16 steps
    return result


def test_a_worker_killed_mid_epoch_restarts_the_job_exactly(tmp_path, uninterrupted):
    epoch = random.Random(7).randrange(2, uninterrupted["stopped_epoch"] - 1)
    print(f"SIGKILL of rank 1 in epoch {epoch}")
    run_dir = str(tmp_path)
    _, output = run_job(
        run_dir,
        "--max-restarts",
        "1",
        "--faults",
        faults({"name": "a", "rank": 1, "epoch": epoch, "batch": 2, "signal": "KILL"}),
    )
    result = outcome(run_dir, output)
    assert_same(result, uninterrupted)
    assert result["resumed_after"] == {"0": epoch - 1, "1": epoch - 1}


def test_a_killed_launcher_then_resume_true(tmp_path, uninterrupted):
    run_dir = str(tmp_path)
    committed = os.path.join(run_dir, "state", "epoch-00000005.committed")
    launcher = subprocess.Popen(
        command(run_dir, "--max-restarts", "1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment(),
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 300
        while not os.path.exists(committed):
            assert launcher.poll() is None, "the job ended before the launcher could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
    finally:
        if launcher.poll() is None:
            launcher.kill()
    # Its workers notice (their coordinator is gone) and end; then the job resumes.
    pids = [int(path.rsplit("-", 1)[1]) for path in glob.glob(os.path.join(run_dir, "pid-*"))]
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "the killed launcher's workers outlived it by 60 s"
        time.sleep(0.05)
    _, output = run_job(run_dir, "--max-restarts", "1", "--resume")
    result = outcome(run_dir, output)
    assert_same(result, uninterrupted)
    resumed = result["resumed_after"]["0"]
    assert resumed is not None
    assert resumed >= 5


def test_sigterm_of_a_worker_stops_every_worker_and_the_job_goes_on(tmp_path, uninterrupted):
    run_dir = str(tmp_path)
    _, output = run_job(
        run_dir,
        "--max-restarts",
        "1",
        "--faults",
        faults({"name": "c", "rank": 0, "epoch": 6, "batch": 1, "signal": "TERM"}),
    )
    result = outcome(run_dir, output)
    assert_same(result, uninterrupted)
    assert "was preempted (SIGTERM)" in output
    assert "exiting with code 143 (retry me)" in output
    assert result["resumed_after"] == {"0": 5, "1": 5}


def test_two_failures_in_one_run(tmp_path, uninterrupted):
    run_dir = str(tmp_path)
    _, output = run_job(
        run_dir,
        "--max-restarts",
        "2",
        "--faults",
        faults(
            {"name": "d1", "rank": 0, "epoch": 3, "batch": 3, "signal": "KILL"},
            {"name": "d2", "rank": 1, "epoch": 8, "batch": 0, "signal": "TERM"},
        ),
    )
    result = outcome(run_dir, output)
    assert_same(result, uninterrupted)
    assert result["resumed_after"] == {"0": 7, "1": 7}


def test_restarts_exhausted_raises_naming_each_failure(tmp_path):
    code, output = run_job(
        str(tmp_path),
        "--max-restarts",
        "1",
        "--faults",
        faults(
            {"name": "e1", "rank": 0, "epoch": 3, "batch": 3, "signal": "KILL"},
            {"name": "e2", "rank": 1, "epoch": 5, "batch": 0, "signal": "KILL"},
        ),
        expect_ok=False,
    )
    assert code != 0
    assert "RestartsExhausted: the job failed 2 times, more than max_restarts=1" in output
    assert "1. WorkerLostError: rank 0 " in output
    assert "2. WorkerLostError: rank 1 " in output


def test_a_worker_whose_code_raised_is_not_restarted(tmp_path):
    code, output = run_job(
        str(tmp_path),
        "--max-restarts",
        "1",
        "--faults",
        faults({"name": "r", "rank": 1, "epoch": 2, "batch": 1, "signal": "RAISE"}),
        expect_ok=False,
    )
    assert code != 0
    assert "WorkerLostError: rank 1 raised RuntimeError: a bug at epoch 2" in output
    assert "restart 1 of 1" not in output


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
