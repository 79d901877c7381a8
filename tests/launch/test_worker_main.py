"""`distcb.worker_main`: the exit code a pod's failure policy reads, with a real coordinator
(`distcb coordinator --state-dir --max-restarts 1`, a subprocess) and a real Keras worker
process (tests/helpers/main_worker.py) that fails in each way a pod can."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distcb.launch.worker_main import exit_code_of, peer_lost, worker_main
from distcb.protocol.errors import CoordinatorLostError, JobInterrupted
from tests.helpers.coordinator_process import CoordinatorProcess

ROOT = Path(__file__).resolve().parents[2]
# Short heartbeats: a worker that saw a peer-loss error waits up to heartbeat_timeout_s for
# the coordinator's word. Coordinator and worker get the same Config.
CONFIG = {"heartbeat_interval_s": 0.25, "heartbeat_timeout_s": 2.0}


def run_worker(coordinator: CoordinatorProcess, scenario: str, run_dir: Path) -> tuple[int, str]:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        TF_CPP_MIN_LOG_LEVEL="3",
        DISTCB_ADDRESS=coordinator.address,
        DISTCB_TOKEN=coordinator.token,
        DISTCB_RANK="0",
        DISTCB_WORLD_SIZE="1",
        DISTCB_RUN_DIR=str(run_dir),
        DISTCB_CONFIG=json.dumps(CONFIG),
    )
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers.main_worker", scenario],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def coordinator_for(tmp_path: Path) -> CoordinatorProcess:
    state = tmp_path / "state"
    return CoordinatorProcess(
        tmp_path,
        world_size=1,
        config=CONFIG,
        args=("--state-dir", str(state), "--max-restarts", "1"),
    )


def coordinator_log(coordinator: CoordinatorProcess) -> str:
    return "".join(coordinator.stdout_lines) + coordinator.stderr()


def wait_for_log(coordinator: CoordinatorProcess, pattern: str, timeout_s: float = 30.0) -> str:
    """The coordinator's log once `pattern` is in it (it logs a restart once the attempt has
    ended, which may be after the worker exited), or its log at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        log = coordinator_log(coordinator)
        if re.search(pattern, log) or time.monotonic() > deadline:
            return log
        time.sleep(0.1)


@pytest.mark.slow
def test_a_bug_exits_1_and_the_coordinator_fails_the_job_at_once(tmp_path):
    with coordinator_for(tmp_path) as coordinator:
        code, output = run_worker(coordinator, "raise", tmp_path / "run")
        assert code == 1, output
        assert "RuntimeError: a bug in the training code" in output  # the traceback is shown
        # Told (WorkerFailed), the coordinator does not restart a job that would raise again.
        exit_code, _ = coordinator.wait(30)
        log = coordinator_log(coordinator)
    assert exit_code == 1, log
    assert "WorkerLostError: rank 0 raised RuntimeError: a bug" in log, log
    assert "restart 1 of 1" not in log


@pytest.mark.slow
def test_a_lost_peer_error_exits_143_and_the_coordinator_restarts_the_job(tmp_path):
    with coordinator_for(tmp_path) as coordinator:
        code, output = run_worker(coordinator, "unavailable", tmp_path / "run")
        assert code == 143, output
        assert "UnavailableError" in output
        # Nothing reported: the coordinator saw a lost worker, and restarts the job from its
        # last committed barrier; the worker started again resumes it and finishes.
        code, output = run_worker(coordinator, "finish", tmp_path / "run")
        assert code == 0, output
        exit_code, _ = coordinator.wait(30)
        log = coordinator_log(coordinator)
    assert exit_code == 0, log
    assert re.search(r"restart 1 of 1 after rank 0 disconnected.*going on after epoch 0", log)


@pytest.mark.slow
def test_an_error_after_the_coordinator_said_restart_exits_143(tmp_path):
    with coordinator_for(tmp_path) as coordinator:
        code, output = run_worker(coordinator, "after-restart", tmp_path / "run")
        assert code == 143, output
        assert "the collectives failed after the stop" not in output  # no failure reported
        pattern = r"restart 1 of 1 after rank 0 was preempted"
        log = wait_for_log(coordinator, pattern)
    assert re.search(pattern, log), log


def test_what_main_returns_or_raises_becomes_the_exit_code():
    assert worker_main(lambda: None) == 0
    assert worker_main(lambda: 3) == 3
    with pytest.raises(SystemExit) as exited:  # argparse's exit 2 goes through as it is
        worker_main(lambda: sys.exit(2))
    assert exited.value.code == 2

    def interrupted() -> None:
        raise JobInterrupted("preempted")

    def lost() -> None:
        raise CoordinatorLostError("the coordinator went away")

    assert worker_main(interrupted) == 143
    assert worker_main(lost) == 143

    def bug() -> None:
        raise ValueError("a bug")

    assert worker_main(bug) == 1  # no session open: nothing to tell, still a failure


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="needs a callable main, received 3"):
        worker_main(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must return an int exit code or None, received 'ok'"):
        worker_main(lambda: "ok")  # type: ignore[arg-type, return-value]


def test_peer_lost_recognises_tensorflows_unavailable_error_and_its_causes():
    from tensorflow.python.framework.errors_impl import UnavailableError

    error = UnavailableError(None, None, "Collective ops is aborted")
    assert peer_lost(error)
    wrapped = RuntimeError("wrapped by a library")
    wrapped.__cause__ = error
    assert peer_lost(wrapped)
    during = ValueError("raised while handling it")
    during.__context__ = wrapped
    assert peer_lost(during)
    assert not peer_lost(RuntimeError("a bug"))
    loop = RuntimeError("a cycle of causes")
    loop.__cause__ = RuntimeError("its cause")
    loop.__cause__.__cause__ = loop
    assert not peer_lost(loop)

    class UnavailableError(Exception):  # noqa: N818 (same name, not TensorFlow's)
        pass

    assert not peer_lost(UnavailableError())


def test_peer_lost_recognises_a_failed_gloo_collective_of_jax():
    # What a JAX process raised here when its peer was SIGKILLed (jax 0.10, CPU, gloo).
    error = ValueError(
        "UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/tcp/pair.cc:538] "
        "Read error [127.0.0.1]:57024: Connection reset by peer"
    )
    assert peer_lost(error)
    wrapped = RuntimeError("raised by Keras while handling it")
    wrapped.__context__ = RuntimeError("INTERNAL: Gloo AllReduce failed: Connection closed")
    assert peer_lost(wrapped)
    assert not peer_lost(ValueError("Gloo is not configured"))
    assert not peer_lost(ValueError("the Glood AllReduce failed"))


class _Told:
    """A host that heard the coordinator's verdict (`WorkerHost.verdict`), and nothing more."""

    def __init__(self, verdict: str | None) -> None:
        self._verdict = verdict

    def verdict(self) -> str | None:
        return self._verdict


@pytest.mark.parametrize("error", [CoordinatorLostError("gone"), JobInterrupted("stopped")])
def test_a_worker_told_the_job_failed_exits_1_however_its_connection_ended(error):
    # Seen on the local pods: rank 1 raised, the coordinator sent Abort (failed) and exited;
    # rank 0's next hook raised CoordinatorLostError. "Retry me" (143) would be a lie there.
    assert exit_code_of(_Told("failed"), error) == 1  # type: ignore[arg-type]
    assert exit_code_of(_Told("restart"), error) == 143  # type: ignore[arg-type]
    assert exit_code_of(_Told(None), error) == 143  # type: ignore[arg-type]
