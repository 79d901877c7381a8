"""`distcb coordinator` on loopback without DISTCB_TOKEN (issue 13, defect 8): the token it
generates is printed to a terminal, never into a file; without a terminal a token is required."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

from distcb.protocol.config import Config
from distcb.testing import ScriptedWorker
from distcb.transport.websocket import connect

ROOT = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "distcb", "coordinator", "--world-size", "1", "--port", "0"]
FAST = Config(heartbeat_interval_s=0.05, heartbeat_timeout_s=5.0, connect_timeout_s=10.0)


def environment() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("DISTCB_TOKEN", None)
    return env


def test_without_a_terminal_the_token_is_required(tmp_path):
    log = tmp_path / "coordinator.log"
    with open(log, "w") as out:
        code = subprocess.run(
            COMMAND, env=environment(), stdout=out, stderr=subprocess.STDOUT, timeout=60
        ).returncode
    assert code == 2
    text = log.read_text()
    assert "DISTCB_TOKEN is not set and stdout is not a terminal" in text
    assert "token (give it" not in text


def test_on_a_terminal_the_generated_token_is_printed_and_lets_a_worker_in(tmp_path):
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        COMMAND,
        env=environment(),
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=subprocess.PIPE,
    )
    os.close(terminal)
    try:
        shown = ""
        while not re.search(r"DISTCB_TOKEN\): (\S+)", shown):
            ready, _, _ = select.select([controller], [], [], 30)
            assert ready, f"nothing printed: {shown!r}"
            shown += os.read(controller, 4096).decode()
        address = re.search(r"listening on (\S+)", shown).group(1)
        token = re.search(r"DISTCB_TOKEN\): (\S+)", shown).group(1)
        assert len(token) >= 32

        async def work() -> None:
            connection = await connect(address, token, config=FAST)
            await ScriptedWorker(0, 1, [{"loss": 1.0}], config=FAST).run(connection)
            await connection.close()

        asyncio.run(work())
        assert process.wait(timeout=30) == 0
        assert token not in process.stderr.read().decode()  # logs never carry it
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
        os.close(controller)
