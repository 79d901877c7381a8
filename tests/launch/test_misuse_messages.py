"""What a user sees when a job goes wrong (issue 21): real workers under `distcb launch` and
`distcb.run`; each message names what happened, each worker exits with the code that
matches (1: failed, nothing to retry; never 143 "retry me"), and a traceback is printed
once."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest

import distcb
from tests.helpers.worker_fns import tiny_keras3

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MISUSE = os.path.join(ROOT, "tests", "launch", "scripts", "misuse.py")
QUICK = '{"stop_timeout_s": 60.0, "heartbeat_interval_s": 0.2}'
TRACEBACK = "Traceback (most recent call last)"


def launch(*args: str) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("DISTCB_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-m", "distcb", "launch", "--nproc-per-node", "2", "--config", QUICK]
        + list(args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        timeout=240,
    )
    return done.returncode, done.stdout


def worker_exit_codes(out: str) -> dict[int, int]:
    found = re.findall(r"rank (\d+) exited with code (\d+)", out)
    return {int(rank): int(code) for rank, code in found}


def assert_nothing_says_retry(out: str) -> None:
    assert "CoordinatorLostError" not in out, out
    # 143 as a number of its own: a loss of 1.143 in the progress line is not an exit code
    assert not re.search(r"(?<![\d.])143(?!\.?\d)", out), out
    assert "retry me" not in out, out
    assert "[Rank" not in out, out


def test_a_rank_that_raises_is_named_to_every_worker_and_all_exit_1():
    code, out = launch(MISUSE, "raise")
    assert code == 1, out
    assert_nothing_says_retry(out)
    # The coordinator names the rank and what it raised (not "it disconnected")...
    assert "the job failed: rank 1 raised RuntimeError: boom at epoch 1" in out, out
    # ... rank 0 says so and exits 1; its fit did not return as if training had finished.
    assert re.search(
        r"\[rank 0\] distcb rank 0: the job failed: rank 1 raised RuntimeError: boom at "
        r"epoch 1; exiting with code 1",
        out,
    ), out
    assert "misuse: rank 0 fit returned" not in out, out
    assert worker_exit_codes(out) == {0: 1, 1: 1}, out
    assert out.count(TRACEBACK) == 1, out  # rank 1's own, printed by rank 1
    assert "coordinator callbacks: none: no function named distcb_callbacks in" in out, out


def test_a_coordinator_callback_that_raises_is_named_to_every_worker():
    code, out = launch("--callbacks", ":exploding_callbacks", MISUSE, "callback")
    assert code == 1, out
    assert_nothing_says_retry(out)
    assert "coordinator callbacks: Explode (from " in out, out
    for rank in (0, 1):
        assert re.search(
            rf"\[rank {rank}\] distcb rank {rank}: the job failed: coordinator callback Explode "
            r"raised ValueError: the callback exploded at epoch 1; exiting with code 1",
            out,
        ), out
    assert worker_exit_codes(out) == {0: 1, 1: 1}, out
    assert out.count(TRACEBACK) == 1, out  # the callback's, printed by the launcher
    assert "raised by the coordinator callback Explode" in out, out


def test_a_refused_job_says_why_and_every_worker_exits_1():
    code, out = launch(MISUSE, "mismatch")
    assert code == 1, out
    assert_nothing_says_retry(out)
    for rank in (0, 1):
        assert re.search(
            rf"distcb rank {rank}: the job failed before training started: rank 1 trains for "
            r"epochs=4 but the chief for epochs=3",
            out,
        ), out
    assert worker_exit_codes(out) == {0: 1, 1: 1}, out
    assert TRACEBACK not in out, out


def test_a_script_without_worker_callback_gets_the_likely_cause():
    code, out = launch(MISUSE, "forgot")
    assert code == 1, out
    assert_nothing_says_retry(out)
    assert re.search(
        r"the job failed: rank 1 exited before it finished training \(exit code 0\); it never "
        r"joined the job: did its script add distcb.keras.WorkerCallback\(\) to model.fit\?",
        out,
    ), out
    assert worker_exit_codes(out)[0] == 1, out
    assert TRACEBACK not in out, out


def test_distcb_run_names_the_rank_once_and_the_survivor_exits_1(tmp_path, capfd):
    output = io.StringIO()
    with pytest.raises(distcb.WorkerLostError) as info:
        distcb.run(
            tiny_keras3,
            num_workers=2,
            kwargs={"epochs": 20, "raise_at_epoch": 1},
            run_dir=str(tmp_path),
            output=output,
        )
    assert str(info.value).startswith("rank 1 raised RuntimeError: boom at epoch 1")
    workers = output.getvalue()
    logged = capfd.readouterr()
    # The traceback travels in the exception (the caller prints it once); the workers
    # and the coordinator's log say one line each.
    assert TRACEBACK in (info.value.traceback_text or "")
    assert TRACEBACK not in workers + logged.out + logged.err, workers + logged.err
    assert re.search(
        r"\[rank 0\] distcb rank 0: the job failed: rank 1 raised RuntimeError: boom at epoch 1; "
        r"exiting with code 1",
        workers,
    ), workers
    assert "retry me" not in workers + logged.err
    assert not os.path.exists(tmp_path / "rank-0.json")  # rank 0's fit did not return
