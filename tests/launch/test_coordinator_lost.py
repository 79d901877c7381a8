"""A real worker whose coordinator disappears stops with a clear error, within a bounded time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_worker_stops_when_its_coordinator_is_killed(tmp_path):
    config = json.dumps({"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 2.0})
    env = dict(
        os.environ,
        DISTCB_TOKEN="lost-token-1",
        PYTHONPATH=ROOT,
        TF_CPP_MIN_LOG_LEVEL="3",
        DISTCB_CONFIG=config,
    )
    coordinator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distcb",
            "coordinator",
            "--world-size",
            "1",
            "--port",
            "0",
            "--config",
            config,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    worker = None
    try:
        address = None
        for line in coordinator.stdout:
            found = re.search(r"listening on (\S+)", line)
            if found:
                address = found.group(1)
                break
        assert address is not None
        worker_env = dict(
            env,
            DISTCB_ADDRESS=address,
            DISTCB_RANK="0",
            DISTCB_WORLD_SIZE="1",
            PLAIN_WORKER_EPOCHS="100000",
            PLAIN_WORKER_MARK=str(tmp_path / "joined"),
        )
        worker = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests", "helpers", "plain_worker.py")],
            env=worker_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not (tmp_path / "joined").exists():  # the worker is training
            assert worker.poll() is None, worker.stdout.read()[-2000:]
            assert time.monotonic() < deadline, "the worker never started training"
            time.sleep(0.1)
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait(10)
        killed_at = time.monotonic()
        out, _ = worker.communicate(timeout=60)
        elapsed = time.monotonic() - killed_at
    finally:
        for process in (coordinator, worker):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert worker.returncode == 143, out[-2000:]  # "retry me": a pod would be started again
    assert "CoordinatorLostError" in out, out[-2000:]
    assert "rank 0" in out
    # Heartbeat timeout 2 s: the worker notices within a few seconds, not never.
    assert elapsed < 30
