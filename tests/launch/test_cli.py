"""`distcb coordinator` with workers started by hand, as on Kubernetes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys

import msgspec
import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_standalone_coordinator_and_hand_started_workers(tmp_path):
    env = dict(os.environ, DISTCB_TOKEN="test-token-123", PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    history_path = tmp_path / "history.json"
    coordinator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distcb",
            "coordinator",
            "--world-size",
            "2",
            "--port",
            "0",
            "--callbacks",
            "tests.helpers.plain_worker:make_callbacks",
            "--history",
            str(history_path),
            "--config",
            json.dumps({"max_message_bytes": 65536}),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
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
            worker_env = dict(
                env, DISTCB_ADDRESS=address, DISTCB_RANK=str(rank), DISTCB_WORLD_SIZE="2"
            )
            workers.append(
                subprocess.Popen(
                    [sys.executable, os.path.join(ROOT, "tests", "helpers", "plain_worker.py")],
                    env=worker_env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        rejected = asyncio.run(_intrude(address, env["DISTCB_TOKEN"]))
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
    # Intruders were turned away and the real workers' job was not disturbed.
    assert rejected["wrong token"] == 401
    assert rejected["protocol 99"] == 1008
    assert rejected["garbage"] == 1008  # not MessagePack: a policy violation
    assert rejected["oversized"] == 1009
    assert len(history["history"]["loss"]) == 2


async def _intrude(address: str, token: str) -> dict[str, int]:
    """Wrong token, wrong protocol, garbage, an oversized frame: what the server answered."""
    import aiohttp

    url = f"http://{address}/ws"
    good = {"Authorization": f"Bearer {token}"}
    out: dict[str, int] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.get(url, headers={"Authorization": "Bearer nope"}) as response:
            out["wrong token"] = response.status
        join = {"type": "join", "protocol": 99, "rank": 0, "world_size": 2}
        frames = {
            "protocol 99": msgspec.msgpack.encode(join),
            "garbage": b"\xc1 this is not msgpack",
            "oversized": b"x" * (65536 + 1),
        }
        for name, frame in frames.items():
            async with session.ws_connect(url, headers=good, max_msg_size=0) as ws:
                await ws.send_bytes(frame)
                message = await ws.receive()
                while message.type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    message = await ws.receive()
                out[name] = ws.close_code
    return out


def test_callbacks_spec_must_name_a_function(capsys):
    from distcb.launch.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["coordinator", "--world-size", "1", "--callbacks", "nocolon"])
    assert stopped.value.code == 2
    assert "--callbacks must be MODULE:FUNCTION" in capsys.readouterr().err
