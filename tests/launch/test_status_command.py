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
    # Keras's count: the fourth epoch (0-based 3) is at its barrier.
    assert held.startswith("distcb job: training · epoch 4/8 · global step 16 · 2 workers (2 live)")
    assert re.search(r"^  1\s+scripted-1:1001\s+at_barrier\s+3\s+3\s+0\s+\d\.\d s ago$", held, re.M)
    assert re.search(r"^  val_loss\s+[▁-█]{3}  0\.55$", held, re.M)  # epochs 0-2 of the mean
    assert (
        "Spread of val_loss over workers (last epoch)\n  min 0.3 (rank 0)  max 0.6 (rank 1)" in held
    )
    assert "set_lr learning_rate=0.025 at epoch begin 3  by LearningRateScheduler" in held
    assert "RemoteMonitor: sent 3  dropped 0  failed 0" in held
    assert "CSVLogger: file " in held
    last = out.strip().split("distcb job:")[-1]
    assert last.startswith(" done · stopped early at epoch 5/8")  # 5 epochs ran, not "4/8"
    assert "stop at epoch end 4  by EarlyStopping" in last


def test_status_without_watch_prints_text_and_json_with_json(tmp_path):
    with LiveJob(tmp_path, hold_at=2) as job:
        assert job.gate.held.wait(30)
        text = status_cli("--address", job.address, token=job.token)
        as_json = status_cli("--address", job.address, "--json", token=job.token)
        out, err = text.communicate(timeout=60)
        raw, err_json = as_json.communicate(timeout=60)
        status = fetch(job)
        job.release()
    assert text.returncode == 0, err
    assert without_ages(out.strip("\n")) == without_ages(render(status))
    assert out.startswith("distcb job: training · epoch 3/8 · global step 12")
    assert as_json.returncode == 0, err_json
    assert json.loads(raw)["epoch"] == 2


def test_help_is_plain_text():
    done = subprocess.run(
        [sys.executable, "-m", "distcb", "status", "--help"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=60,
    )
    assert done.returncode == 0
    assert "``" not in done.stdout, done.stdout
    assert "distcb status --address coordinator:8765 --json" in done.stdout


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


def status_of(**fields) -> dict:
    """A /status answer with only what the text view reads."""
    base = {
        "phase": "training",
        "epoch": 0,
        "epochs": 400,
        "epochs_done": 0,
        "global_step": 0,
        "batches_streamed": True,
        "world_size": 2,
        "live": [0, 1],
        "workers": [],
        "history": {},
        "history_epochs": [],
        "decisions": [],
        "decision_count": 0,
        "sinks": {},
    }
    return {**base, **fields}


@pytest.mark.parametrize(
    ("fields", "headline"),
    [
        ({"phase": "training", "epoch": 0}, "training · epoch 1/400 ·"),
        ({"phase": "done", "epoch": 399, "epochs_done": 400}, "done · finished 400/400 epochs ·"),
        (
            {"phase": "done", "epoch": 607, "epochs": 4000, "epochs_done": 608},
            "done · stopped early at epoch 608/4000 ·",
        ),
        (
            {"phase": "done", "epoch": 3, "epochs_done": 3, "failure": "rank 1 raised X"},
            "done · failed after 3/400 epochs ·",
        ),
    ],
)
def test_the_headline_counts_epochs_as_keras_does(fields, headline):
    assert headline in render(status_of(**fields)).splitlines()[0]


def test_steps_that_are_not_streamed_are_not_shown_as_0_and_minus_1():
    worker = {"rank": 0, "host": "h:1", "state": "training", "epoch": 3, "step": -1}
    text = render(status_of(batches_streamed=False, epoch=3, workers=[worker]))
    assert "steps not streamed" in text.splitlines()[0]
    assert "global step" not in text
    header = next(line for line in text.splitlines() if line.strip().startswith("rank"))
    assert "step" not in header
    assert re.search(r"^  0\s+h:1\s+training\s+3\s+0 ep\s+", text, re.M), text
    assert "-1" not in text


def test_decisions_are_newest_first_with_repeated_saves_collapsed():
    def record(kind, epoch, by, **extra):
        at = {"phase": "epoch_end", "epoch": epoch}
        return {"kind": kind, "at": at, "made_by": by, "time": 1000.0 + epoch, **extra}

    records = [record("save", e, "ModelCheckpoint", filepath=f"m-{e}.keras") for e in range(5)]
    records.append(record("set_lr", 5, "ReduceLROnPlateau", learning_rate=0.01))
    records.append(record("save", 6, "ModelCheckpoint", filepath="m-6.keras"))
    text = render(status_of(decisions=records, decision_count=7))
    lines = text.split("Decisions (7 most recent of 7, newest first)\n")[1].splitlines()
    assert "save filepath=m-6.keras" in lines[0]
    assert "set_lr learning_rate=0.01" in lines[1]
    assert "save x5 (newest: save filepath=m-4.keras at epoch end 4)" in lines[2]
    assert lines[3] == ""


def test_the_learning_rate_is_drawn_on_a_log_scale():
    rates = [0.1, 0.01, 0.001, 0.0001]
    text = render(
        status_of(history={"learning_rate": rates, "loss": rates}, history_epochs=[0, 1, 2, 3])
    )
    # One step per decade on the log scale; the same values on a linear one crowd the bottom.
    assert "  learning_rate  █▆▃▁  0.0001  (log scale)\n" in text
    assert "  loss           █▂▁▁  0.0001\n" in text
