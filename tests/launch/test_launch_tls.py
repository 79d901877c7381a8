"""`distcb launch` across two "nodes" with TLS, as the README's two-machine example runs it
(issue 25, item 13): real launchers, a certificate from a test CA, workers over wss://."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tests.helpers.pki import make_ca, make_server_cert

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "launch", "scripts", "scripted_worker.py")
TOKEN = "a-test-token-for-the-tls-nodes"
QUICK = json.dumps({"stop_timeout_s": 2.0, "heartbeat_interval_s": 0.2})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher(*args: str, env: dict[str, str]) -> subprocess.Popen:
    environment = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", **env)
    return subprocess.Popen(
        [sys.executable, "-m", "distcb", "launch", *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )


def finish(process: subprocess.Popen, timeout: float = 120) -> str:
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return out


def test_the_readme_two_node_example_runs_with_tls(tmp_path):
    ca, ca_key, ca_name = make_ca(tmp_path, "job-ca")
    cert, key = make_server_cert(tmp_path, ca_key, ca_name)
    coordinator = f"127.0.0.1:{free_port()}"
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--coordinator", coordinator]
    common += ["--config", QUICK]
    # Node 0 names the CA with --tls-ca; node 1 has it `export`ed, as in the README.
    node0 = launcher(
        *common, "--node-rank", "0", "--bind", "0.0.0.0", "--tls-cert", str(cert),
        "--tls-key", str(key), "--tls-ca", str(ca), "--history", str(tmp_path / "history.json"),
        WORKER, env={"DISTCB_TOKEN": TOKEN},
    )  # fmt: skip
    node1 = launcher(
        *common, "--node-rank", "1", WORKER, env={"DISTCB_TOKEN": TOKEN, "DISTCB_TLS_CA": str(ca)}
    )
    out1 = finish(node1)
    out0 = finish(node0)
    assert node0.returncode == 0, out0[-4000:]
    assert node1.returncode == 0, out1[-4000:]
    assert f"status page https://{coordinator}/" in out0
    assert f"[rank 0] rank 0 trained 2 epochs (ca {ca})" in out0
    assert f"[rank 1] rank 1 trained 2 epochs (ca {ca})" in out1
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["history"]["loss"] == [1.5, 1.0]  # the mean over both ranks


def test_a_node_without_the_ca_cannot_reach_a_tls_node_0_and_says_why(tmp_path):
    ca, ca_key, ca_name = make_ca(tmp_path, "job-ca")
    cert, key = make_server_cert(tmp_path, ca_key, ca_name)
    coordinator = f"127.0.0.1:{free_port()}"
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--coordinator", coordinator]
    common += ["--config", json.dumps({"join_timeout_s": 3.0, "stop_timeout_s": 1.0})]
    node0 = launcher(
        *common, "--node-rank", "0", "--tls-cert", str(cert), "--tls-key", str(key), WORKER,
        env={"DISTCB_TOKEN": TOKEN, "DISTCB_TLS_CA": str(ca)},
    )  # fmt: skip
    node1 = launcher(*common, "--node-rank", "1", WORKER, env={"DISTCB_TOKEN": TOKEN})
    out1 = finish(node1)
    node0.kill()
    finish(node0)
    assert node1.returncode == 1, out1
    assert "this coordinator speaks TLS; set DISTCB_TLS_CA" in out1, out1


def test_tls_options_are_checked_before_anything_starts(tmp_path):
    ca, ca_key, ca_name = make_ca(tmp_path, "job-ca")
    cert, key = make_server_cert(tmp_path, ca_key, ca_name)
    env = {"DISTCB_TOKEN": TOKEN}
    cases = [
        (["--tls-cert", str(cert)], "TLS needs both a certificate and its key"),
        (["--tls-cert", str(cert), "--tls-key", str(key)], "--tls-cert needs the CA"),
        (["--tls-cert", str(key), "--tls-key", str(key), "--tls-ca", str(ca)], "could not load"),
    ]
    for args, expected in cases:
        process = launcher("--coordinator", "127.0.0.1:0", *args, WORKER, env=env)
        out = finish(process, timeout=60)
        assert process.returncode == 2, out
        assert expected in out, out
    # A remote node without TLS: the token would cross the network in plaintext.
    process = launcher(
        "--nnodes", "2", "--node-rank", "1", "--coordinator", "10.0.0.1:29400", WORKER, env=env
    )
    out = finish(process, timeout=60)
    assert process.returncode == 2, out
    assert "would send the job's token to 10.0.0.1 in plaintext" in out, out
