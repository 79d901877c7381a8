"""Workers never outlive their launcher (issue 13, defect 5), and a launcher clears what a
killed save left in its run directory before its workers start (defect 10)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import distcb
from distcb.protocol.config import Config
from distcb.protocol.errors import DistcbError
from tests.helpers import orphans

ROOT = Path(__file__).resolve().parents[2]
GONE_WITHIN_S = 5.0  # SIGKILLed by the kernel as the launcher dies; 5 s covers a loaded box


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, not yet reaped) counts as gone."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_launcher_killed_before_they_reach_fit(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.orphans", str(marks)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(pids) < 2:
            assert time.monotonic() < deadline, "the workers never started"
            assert launcher.poll() is None, "the launcher ended early"
            time.sleep(0.05)
            pids = [int(p.name) for p in marks.iterdir()]
        assert all(alive(pid) for pid in pids)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + GONE_WITHIN_S
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = [pid for pid in pids if alive(pid)]
        assert survivors == [], f"workers {survivors} outlived their launcher"
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def test_the_process_backend_removes_stale_save_temporaries_at_startup(tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    stale = checkpoints / ".distcb-k2j3h4.keras"
    stale.write_bytes(b"half a model")
    kept = checkpoints / "model-01.keras"
    kept.write_bytes(b"a whole model")
    config = Config(join_timeout_s=30.0)
    with pytest.raises(DistcbError):  # the workers return without training: a lost worker
        distcb.run(orphans.no_training, num_workers=1, run_dir=str(tmp_path / "run"), config=config)
    assert not stale.exists()
    assert kept.read_bytes() == b"a whole model"
