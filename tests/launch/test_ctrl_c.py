"""Ctrl-C, a real SIGINT to a real launching process: `distcb launch` and a script calling
`distcb.run`. The job stops at the next epoch end on every worker, on_train_end runs, one
summary line names the epoch and the best checkpoint, and no KeyboardInterrupt traceback
is printed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "tests", "launch", "scripts", "resume_script.py")
FAST = json.dumps({"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 4.0, "stop_timeout_s": 20.0})
ENV = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")


def interrupt_after_epochs(command: list[str], run_dir: str, epochs: int) -> tuple[int, str]:
    """Start `command`, SIGINT it once `epochs` epochs are in the CSV; its code and output."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, cwd=ROOT
    )
    csv = os.path.join(run_dir, "log.csv")
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, "the job ended before Ctrl-C: " + process.stdout.read()
            assert time.monotonic() < deadline, f"no {epochs} epochs within 300 s"
            if os.path.exists(csv):
                with open(csv) as handle:
                    if len(handle.readlines()) > epochs:  # the header, then one line an epoch
                        break
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out


def check_clean_stop(out: str, run_dir: str) -> int:
    assert "Traceback" not in out, out[-4000:]
    assert "KeyboardInterrupt" not in out, out[-4000:]
    summary = [x for x in out.splitlines() if x.startswith("stopped by Ctrl-C after epoch ")]
    assert len(summary) == 1, out[-4000:]
    best = os.path.join(run_dir, "best.weights.h5")
    assert summary[0].endswith(f"; best checkpoint at {best}"), summary[0]
    epoch = int(summary[0].split("after epoch ")[1].split(";")[0])
    assert 3 <= epoch < 20
    # Both workers went on after fit (their reports are written after it returned).
    assert os.path.exists(os.path.join(run_dir, "report-0.json"))
    assert os.path.exists(os.path.join(run_dir, "report-1.json"))
    return epoch


def test_ctrl_c_on_distcb_launch_stops_the_job_at_an_epoch_end(tmp_path):
    run_dir = str(tmp_path)
    command = [
        sys.executable, "-m", "distcb", "launch", "--nproc-per-node", "2", "--run-dir", run_dir,
        "--history", os.path.join(run_dir, "history.json"), "--config", FAST, SCRIPT, run_dir,
    ]  # fmt: skip
    code, out = interrupt_after_epochs(command, run_dir, 3)
    assert code == 128 + signal.SIGINT, out[-4000:]
    epoch = check_clean_stop(out, run_dir)
    assert os.path.exists(os.path.join(run_dir, "train-end")), "on_train_end did not run"
    with open(os.path.join(run_dir, "history.json")) as handle:
        assert len(json.load(handle)["epoch"]) == epoch
    assert "Ctrl-C: the job stops at the end of this epoch" in out
    assert "the job failed" not in out


def test_ctrl_c_on_distcb_run_returns_the_history_of_a_coordinated_stop(tmp_path):
    run_dir = str(tmp_path)
    command = [sys.executable, "-m", "tests.helpers.resume_job", run_dir]
    code, out = interrupt_after_epochs(command, run_dir, 3)
    assert code == 0, out[-4000:]
    epoch = check_clean_stop(out, run_dir)
    result = json.loads([x for x in out.splitlines() if x.startswith("RESULT ")][-1][7:])
    assert len(result["epochs"]) == epoch
    # on_train_end ran: EarlyStopping(restore_best_weights) restored the best weights there.
    kinds = [d[0] for d in result["decisions"]]
    assert kinds[-1] == "restore"
    # The stop is distcb's own decision (the Ctrl-C), made at the last epoch's end.
    stops = [d for d in result["decisions"] if d[0] == "stop"]
    assert [d[2] for d in stops] == ["distcb"]
