"""`distcb status --watch`: the status page's sections in a terminal, redrawn until the job
ends, against a live coordinator."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import urllib.request

import pytest

from distcb.launch.status_command import render, sparkline
from tests.helpers.live_job import LiveJob

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def status_cli(*args: str, token: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "distcb", "status", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT, DISTCB_TOKEN=token),
    )


def without_ages(frame: str) -> str:
    return re.sub(r"\d+\.\d s ago", "N s ago", frame)


def fetch(job: LiveJob) -> dict:
    request = urllib.request.Request(
        f"http://{job.address}/status", headers={"Authorization": f"Bearer {job.token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_watch_shows_the_status_and_ends_with_the_job(tmp_path):
    with LiveJob(tmp_path, hold_at=3) as job:
        assert job.gate.held.wait(30)
        watcher = status_cli(
            "--address", job.address, "--watch", "--interval-s", "0.2", token=job.token
        )
        try:
            frame: list[str] = []
            frames: list[str] = []
            while len(frames) < 2:  # two whole frames of the held job
                line = watcher.stdout.readline()
                assert line, watcher.stderr.read()
                if line.startswith("distcb job:") and frame:
                    frames.append("".join(frame))
                    frame = []
                frame.append(line)
            held = frames[-1].strip("\n")
            # The same text as rendering /status here (heartbeat ages aside).
            assert without_ages(held) == without_ages(render(fetch(job)))
            job.release()
            out, err = watcher.communicate(timeout=60)
        finally:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()
    assert watcher.returncode == 0, err
    assert held.startswith("distcb job: training · epoch 3/8 · global step 16 · 2 workers (2 live)")
    assert re.search(r"^  1\s+scripted-1:1001\s+at_barrier\s+3\s+3\s+0\s+\d\.\d s ago$", held, re.M)
    assert re.search(r"^  val_loss\s+[▁-█]{3}  0\.55$", held, re.M)  # epochs 0-2 of the mean
    assert (
        "Spread of val_loss over workers (last epoch)\n  min 0.3 (rank 0)  max 0.6 (rank 1)" in held
    )
    assert "set_lr learning_rate=0.025 at epoch begin 3  by LearningRateScheduler" in held
    assert "RemoteMonitor: sent 3  dropped 0  failed 0" in held
    assert "CSVLogger: file " in held
    last = out.strip().split("distcb job:")[-1]
    assert last.startswith(" done · epoch 4/8")
    assert "stop at epoch end 4  by EarlyStopping" in last


def test_status_says_why_it_cannot_show_anything():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens there once closed
    done = status_cli("--address", f"127.0.0.1:{port}", token="x")
    out, err = done.communicate(timeout=30)
    assert done.returncode == 1
    assert f"distcb status: cannot reach the coordinator at 127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_a_wrong_token_is_a_usage_error(tmp_path):
    with LiveJob(tmp_path, hold_at=0) as job:
        done = status_cli("--address", job.address, token="not-the-token")
        out, err = done.communicate(timeout=30)
        job.release()
    assert done.returncode == 2
    assert "rejected the token; set DISTCB_TOKEN or pass --token-file" in err
    assert "Traceback" not in err


def test_sparklines_scale_to_the_values():
    assert sparkline([0.0, 1.0, 2.0, 3.0]) == "▁▃▆█"
    assert sparkline([5.0, 5.0]) == "▅▅"
    assert sparkline([1.0, float("nan"), 2.0]) == "▁!█"
