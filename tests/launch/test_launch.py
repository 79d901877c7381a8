"""`distcb launch` with real processes: launchers as subprocesses, "nodes" on loopback."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "launch_train.py")
SLEEPER = os.path.join(ROOT, "tests", "launch", "scripts", "sleeper.py")
RESULT_PREFIX = "launch_train result "
TOKEN = "a-test-token-for-the-nodes"
QUICK = json.dumps({"stop_timeout_s": 1.0, "heartbeat_interval_s": 0.2})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher(*args: str, token: str | None = TOKEN) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("DISTCB_TOKEN", None)
    if token is not None:
        env["DISTCB_TOKEN"] = token
    return subprocess.Popen(
        [sys.executable, "-m", "distcb", "launch", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return out


def results(out: str) -> list[dict]:
    lines = [x.partition(RESULT_PREFIX)[2] for x in out.splitlines() if RESULT_PREFIX in x]
    return [json.loads(x) for x in lines]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_nodes_of_two_workers_train_synchronously_like_one_process(tmp_path):
    args = ["--epochs", "10", "--patience", "3", "--min-delta", "10"]
    reference = subprocess.run(
        [sys.executable, EXAMPLE, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    expected = results(reference.stdout)[0]["loss"]
    # EarlyStopping(min_delta=10) never sees an improvement after epoch 0: it stops after
    # epoch 3; the learning rate drops from 0.05 to 0.02 at epoch 1 (distcb_callbacks()).
    assert len(expected) == 4

    history_path = tmp_path / "history.json"
    coordinator = f"127.0.0.1:{free_port()}"
    common = ["--nnodes", "2", "--nproc-per-node", "2", "--coordinator", coordinator]
    common += ["--tf-config", "--threads-per-worker", "1"]
    node0 = launcher(*common, "--node-rank", "0", "--history", str(history_path), EXAMPLE, *args)
    node1 = launcher(*common, "--node-rank", "1", EXAMPLE, *args)
    out1 = finish(node1)
    out0 = finish(node0)
    assert node0.returncode == 0, out0[-4000:]
    assert node1.returncode == 0, out1[-4000:]

    history = json.loads(history_path.read_text())
    assert history["epoch"] == [0, 1, 2, 3]
    assert history["history"]["loss"] == pytest.approx(expected, rel=1e-5)
    assert history["history"]["learning_rate"] == pytest.approx([0.05, 0.02, 0.02, 0.02])

    workers = sorted(results(out0) + results(out1), key=lambda r: r["rank"])
    assert [w["rank"] for w in workers] == [0, 1, 2, 3]
    assert [w["local_rank"] for w in workers] == [0, 1, 0, 1]
    assert {w["rank"] for w in results(out1)} == {2, 3}  # node 1 has ranks 2 and 3
    # One TF_CONFIG for all four, from the rendezvous: two ports on each node.
    clusters = {json.dumps(w["cluster"]) for w in workers}
    assert len(clusters) == 1
    assert len(workers[0]["cluster"]["worker"]) == 4
    # Every sample exactly once per step, over the four workers.
    shards = [w["shard"] for w in workers]
    assert sorted(i for shard in shards for i in shard) == list(range(32))
    assert all(len(shard) == 8 for shard in shards)
    for worker in workers:  # each worker's own History is the job's (synchronous)
        assert worker["loss"] == pytest.approx(expected, rel=1e-5)
    # Output is prefixed by rank, on the node that runs the rank.
    assert re.search(r"^\[rank 3\] launch_train result ", out1, re.M)
    assert re.search(r"^\[rank 0\] launch_train result ", out0, re.M)


def started(process: subprocess.Popen, count: int) -> tuple[dict[int, int], list[str]]:
    """Read the launcher's output until `count` sleepers said who they are: rank -> pid."""
    pids: dict[int, int] = {}
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while len(pids) < count:
        assert time.monotonic() < deadline, "".join(lines)
        line = process.stdout.readline()
        assert line, "the launcher ended early:\n" + "".join(lines)
        lines.append(line)
        found = re.search(r"pid (\d+) rank (\d+)", line)
        if found:
            pids[int(found.group(2))] = int(found.group(1))
    return pids, lines


def test_a_worker_that_fails_fails_the_job_and_its_peers_are_ended():
    process = launcher("--nproc-per-node", "2", "--config", QUICK, SLEEPER, "1", token=None)
    pids, lines = started(process, 2)
    out = "".join(lines) + finish(process, timeout=60)
    assert process.returncode == 1, out
    assert "the job failed: rank 1 exited with code 3" in out
    assert not alive(pids[0]), "rank 0 outlived its launcher"


def test_a_job_that_fails_on_node_0_ends_node_1_and_its_workers_with_its_exit_code():
    port = free_port()
    common = ["--nnodes", "2", "--nproc-per-node", "2", "--coordinator", f"127.0.0.1:{port}"]
    common += ["--config", QUICK]
    node0 = launcher(*common, "--node-rank", "0", SLEEPER, "0")  # rank 0 exits 3 at once
    node1 = launcher(*common, "--node-rank", "1", SLEEPER, "0")
    pids1, lines1 = started(node1, 2)
    out0 = finish(node0, timeout=60)
    out1 = "".join(lines1) + finish(node1, timeout=60)
    assert node0.returncode == 1, out0
    assert "the job failed: rank 0 exited with code 3" in out0
    # Node 1's workers never heard of the failure (they never joined): node 1 learnt the
    # outcome from node 0, stopped them, and exits with the job's code.
    assert node1.returncode == 1, out1
    assert "the job ended (rank 0 exited with code 3) but ranks [2, 3] did not exit" in out1
    assert not [pid for pid in pids1.values() if alive(pid)]


def test_sigterm_is_forwarded_and_every_node_exits_143():
    port = free_port()
    common = ["--nnodes", "2", "--nproc-per-node", "2", "--coordinator", f"127.0.0.1:{port}"]
    common += ["--config", QUICK]
    node0 = launcher(*common, "--node-rank", "0", SLEEPER)
    node1 = launcher(*common, "--node-rank", "1", SLEEPER)
    pids0, lines0 = started(node0, 2)
    pids1, lines1 = started(node1, 2)
    assert sorted(pids0) == [0, 1]
    assert sorted(pids1) == [2, 3]
    node1.send_signal(signal.SIGTERM)  # a preempted machine
    out1 = "".join(lines1) + finish(node1, timeout=60)
    out0 = "".join(lines0) + finish(node0, timeout=60)
    assert node1.returncode == 143, out1
    assert "received SIGTERM; forwarding it to the workers" in out1
    assert "[rank 2] rank 2 got SIGTERM" in out1  # the workers themselves got it
    assert "[rank 3] rank 3 got SIGTERM" in out1
    # Node 1 told node 0 that its workers were killed by SIGTERM: "retry me" everywhere.
    assert node0.returncode == 143, out0
    assert "exited with code 143" in out0
    assert not [pid for pid in (*pids0.values(), *pids1.values()) if alive(pid)]


def test_a_node_that_finds_no_coordinator_gives_up_with_a_reason():
    port = free_port()
    process = launcher(
        "--nnodes", "2", "--node-rank", "1", "--coordinator", f"127.0.0.1:{port}",
        "--config", json.dumps({"join_timeout_s": 1.0}), SLEEPER,
    )  # fmt: skip
    out = finish(process, timeout=60)
    assert process.returncode == 1, out
    assert f"no rendezvous with the coordinator at http://127.0.0.1:{port} within 1 s" in out
    assert "Traceback" not in out
