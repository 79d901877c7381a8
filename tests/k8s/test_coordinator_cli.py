"""`distcb coordinator` as the coordinator pod runs it: the state directory is checked before
anything starts, and the listening address goes through DISTCB_HOST_ALIASES."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from podsim import k8s_exit_code

from distcb.launch.cli import main
from distcb.protocol.errors import JoinTimeoutError

QUICK = json.dumps({"join_timeout_s": 0.3})


def test_an_unwritable_state_dir_stops_the_coordinator_with_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SystemExit) as stopped:
        main(["coordinator", "--world-size", "1", "--state-dir", str(blocker / "state")])
    assert stopped.value.code == 2
    assert f"--state-dir '{blocker / 'state'}' is not a writable directory" in (
        capsys.readouterr().err
    )


def test_the_state_dir_is_created_and_the_bind_address_is_aliased(tmp_path, monkeypatch, capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    monkeypatch.setenv("DISTCB_TOKEN", "a-token")
    monkeypatch.setenv("DISTCB_HOST_ALIASES", f"0.0.0.0:8765=127.0.0.1:{free}")
    state = tmp_path / "state" / "nested"
    with pytest.raises(JoinTimeoutError):  # nobody joins; the coordinator gives up quickly
        main(
            [
                "coordinator",
                "--world-size",
                "1",
                "--host",
                "0.0.0.0",
                "--port",
                "8765",
                "--state-dir",
                str(state),
                "--config",
                QUICK,
            ]
        )
    assert state.is_dir()
    assert f"listening on 127.0.0.1:{free}" in capsys.readouterr().out


def test_sigterm_ends_the_coordinator_with_what_kubernetes_reports_as_143(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "distcb", "coordinator", "--world-size", "2", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, DISTCB_TOKEN="a-token"),
    )
    try:
        assert "listening on" in process.stdout.readline()
        process.send_signal(signal.SIGTERM)
        assert k8s_exit_code(process.wait(timeout=30)) == 143
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
