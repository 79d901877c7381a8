"""Warm spares (issue 24): a restart gives every rank a process that imported TensorFlow and
Keras ahead of time, and the job still ends exactly as the uninterrupted one does.

The job is tests/helpers/resume_job.py (deterministic Keras 3 replicas, compared as
tests/launch/test_exact_resume.py compares them). Its fault waits for a gate file, so that
the test can see the spares (children of the launcher running ``distcb.launch.spare``)
before the kill, and kill one of them first.
"""

from __future__ import annotations

import asyncio
import glob
import io
import json
import os
import signal
import subprocess
import time
from typing import Any

import pytest

import distcb
from distcb.launch import spec
from distcb.launch.children import ChildProcess
from distcb.launch.options import LaunchOptions
from distcb.launch.process import warm_spare_count
from distcb.launch.spare import READY_LINE, read_assignment
from distcb.launch.spare_pool import SparePool, assign, spare_command, warm_imports
from distcb.worker.context import WorkerContext
from tests.launch.test_exact_resume import (
    assert_same,
    command,
    environment,
    faults,
    outcome,
    run_job,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("value", ["2", 1.0, True])
def test_warm_spares_of_another_type_is_a_type_error_naming_it(value):
    with pytest.raises(TypeError, match=f"warm_spares must be an int >= 0 or None.*{value!r}"):
        LaunchOptions(warm_spares=value)


def test_negative_warm_spares_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="warm_spares must be an int >= 0.*received -1"):
        LaunchOptions(warm_spares=-1)


def test_warm_spare_count_defaults_to_one_per_worker_when_the_job_may_restart():
    assert warm_spare_count(None, 3, max_restarts=1) == 3
    assert warm_spare_count(None, 3, max_restarts=0) == 0
    assert warm_spare_count(0, 3, max_restarts=1) == 0
    assert warm_spare_count(2, 3, max_restarts=1) == 2


def test_more_spares_than_workers_fails_before_any_process_starts(tmp_path):
    with pytest.raises(ValueError, match="warm_spares=3 is more than num_workers=2"):
        distcb.run(
            _never_called,
            num_workers=2,
            run_dir=str(tmp_path),
            max_restarts=1,
            warm_spares=3,
        )
    with pytest.raises(ValueError, match="warm_spares=1 needs max_restarts > 0"):
        distcb.run(_never_called, num_workers=2, warm_spares=1)


def _never_called() -> None:
    raise AssertionError("no worker may start")


def test_the_thread_backend_refuses_warm_spares():
    with pytest.raises(TypeError, match="does not support the option 'warm_spares'"):
        distcb.run(_never_called, num_workers=1, backend="thread", warm_spares=1)


def test_warm_imports_follow_the_launcher_else_keras():
    assert warm_imports(["tensorflow", "numpy", "keras"]) == ["tensorflow", "keras"]
    assert warm_imports(["numpy"], installed=lambda name: True) == ["keras"]
    assert warm_imports(["numpy"], installed=lambda name: False) == []


def test_a_bad_assignment_names_what_was_received():
    assert read_assignment('{"env": {"A": "1"}, "spec": "/s"}\n') == ({"A": "1"}, "/s")
    with pytest.raises(ValueError, match="received 'hello"):
        read_assignment("hello\n")
    with pytest.raises(ValueError, match="must map str to str"):
        read_assignment('{"env": {"A": 1}, "spec": "/s"}')


# ----------------------------------------------------------------------------- real jobs


KILL_EPOCH = 5


@pytest.fixture(scope="module")
def cold_uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The job without a fault and without spares: what every warm run must match."""
    run_dir = str(tmp_path_factory.mktemp("cold"))
    _, output = run_job(run_dir, "--max-restarts", "1", "--warm-spares", "0")
    result = outcome(run_dir, output)
    assert result["stopped_epoch"] > KILL_EPOCH
    assert all(not w["warm"] for w in _workers(run_dir).values())
    return result


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_worker_restarts_from_the_warm_spares_exactly(tmp_path, cold_uninterrupted):
    run_dir = str(tmp_path)
    gated = _GatedJob(run_dir)
    try:
        spares = gated.wait_spares(2)
        first = set(_workers(run_dir))
        gated.open_gate()
        result, output = gated.finish()
    finally:
        gated.kill()
    assert_same(result, cold_uninterrupted)
    assert result["resumed_after"] == {"0": KILL_EPOCH - 1, "1": KILL_EPOCH - 1}
    workers = _workers(run_dir)
    restarted = {pid: w for pid, w in workers.items() if pid not in first}
    assert sorted(w["rank"] for w in restarted.values()) == [0, 1], output[-3000:]
    # The restarted workers are the spares seen before the kill, and knew it.
    assert set(restarted) == set(spares), (restarted, spares)
    assert all(w["warm"] for w in restarted.values())
    # Importing ahead of time did not start TensorFlow's runtime (threads, devices).
    assert all(w["tf_context_initialized"] is False for w in restarted.values())
    assert all(not workers[pid]["warm"] for pid in first)
    _assert_gone([*workers, *spares, *gated.spares_seen])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_spare_killed_before_the_restart_is_replaced_and_the_job_is_exact(
    tmp_path, cold_uninterrupted
):
    run_dir = str(tmp_path)
    gated = _GatedJob(run_dir)
    try:
        spares = gated.wait_spares(2)
        victim = min(spares)
        os.kill(victim, signal.SIGKILL)
        replaced = gated.wait_spares(2, without={victim})
        first = set(_workers(run_dir))
        gated.open_gate()
        result, output = gated.finish()
    finally:
        gated.kill()
    assert_same(result, cold_uninterrupted)
    assert "before it was needed; starting another" in output
    workers = _workers(run_dir)
    restarted = {pid for pid in workers if pid not in first}
    assert victim not in restarted
    assert restarted == set(replaced)
    assert all(workers[pid]["warm"] for pid in restarted)
    _assert_gone([*workers, *gated.spares_seen])


class _GatedJob:
    """resume_job.py in a subprocess with warm spares (the default), rank 1 SIGKILLed in
    epoch `KILL_EPOCH` once the test opens the gate."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.gate = os.path.join(run_dir, "gate")
        fault = {
            "name": "k",
            "rank": 1,
            "epoch": KILL_EPOCH,
            "batch": 2,
            "signal": "KILL",
            "after_file": self.gate,
        }
        self.log = open(os.path.join(run_dir, "launcher.log"), "w+")  # noqa: SIM115
        self.launcher = subprocess.Popen(
            command(run_dir, "--max-restarts", "1", "--faults", faults(fault)),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=environment(),
            cwd=ROOT,
        )
        self.spares_seen: set[int] = set()

    def wait_spares(self, count: int, without: set[int] = frozenset()) -> list[int]:  # type: ignore[assignment]
        deadline = time.monotonic() + 300
        while True:
            spares = [pid for pid in _spares_of(self.launcher.pid) if pid not in without]
            self.spares_seen.update(spares)
            if len(spares) == count:
                return spares
            assert self.launcher.poll() is None, self.output()[-3000:]
            assert time.monotonic() < deadline, f"no {count} spares in 300 s: {spares}"
            time.sleep(0.05)

    def open_gate(self) -> None:
        open(self.gate, "w").close()

    def finish(self) -> tuple[dict[str, Any], str]:
        code = self.launcher.wait(timeout=600)
        output = self.output()
        assert code == 0, output[-4000:]
        return outcome(self.run_dir, output), output

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name) as handle:
            return handle.read()

    def kill(self) -> None:
        if self.launcher.poll() is None:
            self.launcher.kill()
            self.launcher.wait()
        self.log.close()


def _spares_of(launcher_pid: int) -> list[int]:
    """The warm spares now waiting: the launcher's children running distcb.launch.spare."""
    found = []
    for path in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(path) as handle:
                stat = handle.read()
            with open(path[: -len("stat")] + "cmdline", "rb") as handle:
                cmdline = handle.read().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == launcher_pid and b"distcb.launch.spare" in cmdline:
            found.append(int(path.split("/")[2]))
    return found


def _workers(run_dir: str) -> dict[int, dict[str, Any]]:
    """Every worker process the job ran, by pid: its rank and what it recorded."""
    workers = {}
    for path in glob.glob(os.path.join(run_dir, "pid-*")):
        _, rank, pid = os.path.basename(path).split("-")
        with open(path) as handle:
            workers[int(pid)] = {"rank": int(rank), **json.load(handle)}
    return workers


def _assert_gone(pids: list[int]) -> None:
    """No process of the job is left (the launcher reaped its children before it exited)."""
    alive = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
    assert not alive, f"processes left after the job: {alive}"


# ----------------------------------------------------------------------------- the pool


def _pool(out: io.StringIO, imports: str = "") -> SparePool:
    def spawn(rank: int) -> ChildProcess:
        env = dict(environment(), SPARE_ONLY="1", DISTCB_WARM_IMPORTS=imports)
        return ChildProcess(
            rank,
            spare_command(),
            env,
            out,
            prefix=f"[spare for rank {rank}] ",
            ready_line=READY_LINE,
            stdin_pipe=True,
        )

    return SparePool([0, 1], spawn, max_deaths=1)


async def test_the_pool_replaces_a_dead_spare_and_close_leaves_no_process():
    out = io.StringIO()
    pool = _pool(out)
    pool.fill()
    await pool.wait_filled()
    first = pool.spares()
    assert sorted(first) == [0, 1]
    os.kill(first[0].pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while pool.spares().get(0) in (None, first[0]):
        assert time.monotonic() < deadline, "the dead spare of rank 0 was not replaced"
        await asyncio.sleep(0.02)
    await pool.wait_filled()
    second = pool.spares()
    assert second[1] is first[1]
    pids = [s.pid for s in (*first.values(), *second.values())]
    await pool.close()
    # This process (their parent) lives on: close, not the kernel, ended them.
    _assert_gone(pids)
    assert pool.spares() == {}
    pool.fill()  # after close: nothing starts
    await pool.wait_filled()
    assert pool.spares() == {}


async def test_a_spare_given_its_rank_runs_the_worker_in_the_rank_environment(tmp_path):
    out = io.StringIO()
    pool = _pool(out, imports="json,no_such_module_xyz")
    try:
        pool.fill()
        await pool.wait_filled()
        spare = pool.take(1)
        assert spare is not None
        assert pool.take(1) is None
        await asyncio.to_thread(spare.ready.wait, 60)
        report = str(tmp_path / "env.json")
        spec_path = spec.write(str(tmp_path), _report_environment, (report,), {})
        context = WorkerContext(rank=1, world_size=2, address="127.0.0.1:1", token="t")
        env = {**environment(), **context.to_env(), "ASSIGNED": "yes"}
        assert assign(spare, env, spec_path)
        assert await asyncio.to_thread(spare.wait, 60) == 0
        spare.finish_output()
    finally:
        await pool.close()
    seen = json.loads(await asyncio.to_thread((tmp_path / "env.json").read_text))
    assert seen["env"] == env  # replaced whole: nothing of the spare's own is left
    assert seen["argv"][1:] == [spec_path]
    assert seen["argv"][0].endswith(os.path.join("distcb", "launch", "child.py"))
    assert seen["stdin"] == ""
    assert "[rank 1] hello from the worker\n" in out.getvalue()
    assert "[spare for rank 1] distcb: warm spare could not import no_such_module_xyz" in (
        out.getvalue()
    )
    assert READY_LINE not in out.getvalue()


def _report_environment(path: str) -> None:
    import sys

    print("hello from the worker", flush=True)
    with open(path, "w") as handle:
        json.dump({"env": dict(os.environ), "argv": sys.argv, "stdin": sys.stdin.read()}, handle)


# ----------------------------------------------------------------------------- "retry me"


def test_a_worker_exiting_retry_me_does_not_wait_for_its_threads(tmp_path):
    """A restart waits for the ended attempt's processes: one that exits 143 skips the
    interpreter's teardown (here a thread that never ends would hold it forever)."""
    spec_path = spec.write(str(tmp_path), _interrupted_with_a_thread_left, (), {})
    context = WorkerContext(rank=0, world_size=1, address="127.0.0.1:1", token="t")
    done = subprocess.run(
        [*spare_command()[:2], "distcb.launch.child", spec_path],
        env={**environment(), **context.to_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 143, done.stdout + done.stderr
    assert "a thread is still running" in done.stdout


def _interrupted_with_a_thread_left() -> None:
    import threading

    from distcb.protocol.errors import JobInterrupted

    threading.Thread(target=threading.Event().wait, daemon=False).start()
    print("a thread is still running", flush=True)
    raise JobInterrupted("the test restarts the job")
