"""`distcb coordinator` with workers started by hand, as on Kubernetes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
HERE = os.path.dirname(os.path.abspath(__file__))


def test_standalone_coordinator_and_hand_started_workers(tmp_path):
    env = dict(os.environ, DISTCB_TOKEN="test-token-123", PYTHONPATH=HERE, TF_CPP_MIN_LOG_LEVEL="3")
    history_path = tmp_path / "history.json"
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "distcb.cli", "coordinator", "--world-size", "2", "--port", "0",
         "--callbacks", "plain_worker:make_callbacks", "--history", str(history_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    workers = []
    try:
        address = None
        for line in coordinator.stdout:
            found = re.search(r"listening on (\S+)", line)
            if found:
                address = found.group(1)
                break
        assert address is not None, "the coordinator never said where it listens"
        for rank in range(2):
            worker_env = dict(env, DISTCB_ADDRESS=address, DISTCB_RANK=str(rank),
                              DISTCB_WORLD_SIZE="2")
            workers.append(subprocess.Popen([sys.executable, os.path.join(HERE, "plain_worker.py")],
                                            env=worker_env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True))
        for worker in workers:
            out, _ = worker.communicate(timeout=120)
            assert worker.returncode == 0, out[-2000:]
        out, _ = coordinator.communicate(timeout=60)
        assert coordinator.returncode == 0, out[-2000:]
    finally:
        for process in [coordinator, *workers]:
            if process.poll() is None:
                process.kill()
                process.wait()
    history = json.loads(history_path.read_text())
    # min_delta=10 never improves: EarlyStopping(patience=1) stops both workers after epoch 1.
    assert history["epoch"] == [0, 1]
    assert len(history["history"]["loss"]) == 2


def test_callbacks_spec_must_name_a_function():
    from distcb.cli import main

    with pytest.raises(SystemExit, match="module:function"):
        main(["coordinator", "--world-size", "1", "--callbacks", "nocolon"])
