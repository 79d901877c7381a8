"""`distcb coordinator` in a subprocess, as the attacks of issue 13 ran against it: its
address and token, its memory (RSS and peak RSS from /proc), its stderr, and a /healthz poller
that measures how long the event loop took to answer."""

from __future__ import annotations

import json
import os
import re
import resource
import select
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
STARTUP_S = 30.0


class CoordinatorProcess:
    """A `distcb coordinator` subprocess on loopback (port 0), stderr kept in a file.

    Args:
        tmp_path: where its stderr goes.
        world_size: ``--world-size``.
        config: Config fields (``--config``).
        callbacks: ``--callbacks module:function``.
        nofile: RLIMIT_NOFILE for the process (None: inherited).
        token: DISTCB_TOKEN.
        env: more environment.
    """

    def __init__(
        self,
        tmp_path: Path,
        *,
        world_size: int,
        config: dict[str, Any] | None = None,
        callbacks: str | None = None,
        nofile: int | None = None,
        token: str = "attack-test-token",
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ):
        self.token = token
        self.stderr_path = tmp_path / "coordinator.stderr"
        command = [sys.executable, "-m", "distcb", "coordinator", "--world-size", str(world_size)]
        command += ["--port", "0", *args]
        if config:
            command += ["--config", json.dumps(config)]
        if callbacks:
            command += ["--callbacks", callbacks]
        environment = dict(
            os.environ, DISTCB_TOKEN=token, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3"
        )
        environment.update(env or {})

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            command,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            preexec_fn=limit,
        )
        self.stdout_lines: list[str] = []
        line = self._readline(STARTUP_S)
        found = re.search(r"listening on (\S+)", line)
        if found is None:
            self.stop()
            raise AssertionError(f"the coordinator did not start: {line!r}\n{self.stderr()}")
        self.address = found.group(1)
        host, _, port = self.address.rpartition(":")
        self.host, self.port = host, int(port)
        self.base = f"http://{self.address}"

    def _readline(self, timeout_s: float) -> str:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        line = self.process.stdout.readline() if ready else ""
        self.stdout_lines.append(line)
        return line

    # ------------------------------------------------------------------ memory, from /proc

    def _status_kb(self, field: str) -> int:
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))

    def rss_mb(self) -> float:
        return self._status_kb("VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        """The high-water mark of RSS since `reset_peak` (VmHWM)."""
        return self._status_kb("VmHWM") / 1024

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    # ------------------------------------------------------------------ HTTP

    def get(self, path: str, *, token: str | None = None, timeout_s: float = 10.0):
        """(status, body as JSON or text) of GET `path`."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(self.base + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status", token=self.token)
        assert code == 200, body
        return body

    # ------------------------------------------------------------------ the end

    def wait(self, timeout_s: float) -> tuple[int, str]:
        """The exit code and the rest of stdout."""
        code = self.process.wait(timeout=timeout_s)
        assert self.process.stdout is not None
        rest = self.process.stdout.read()
        return code, "".join(self.stdout_lines) + rest

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()

    def __enter__(self) -> CoordinatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class HealthPoller:
    """Polls /healthz back to back on its own thread; `worst_s` is the slowest answer (a
    request that failed or timed out counts as its timeout)."""

    def __init__(self, base_url: str, timeout_s: float = 30.0):
        self._url = base_url + "/healthz"
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self.worst_s = 0.0
        self.answers = 0
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, name="healthz-poller", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self._url, timeout=self._timeout_s) as response:
                    response.read()
                self.answers += 1
            except OSError as error:
                self.failures.append(repr(error))
            self.worst_s = max(self.worst_s, time.monotonic() - started)
            self._stop.wait(0.01)

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self._timeout_s + 5)
