"""The per-step harness: a driver (this process, the coordinator) and one worker process.

`StepJob` starts `bench/step_worker.py` once (TensorFlow imported and the model
built once) and runs fits in it one after another, interleaved as the caller
orders them. For a distcb fit the driver runs a real `Coordinator` behind a
real `WebSocketServer` in its own event loop, so this process's CPU time
during the fit is the coordinator's (nothing else runs here meanwhile).

With ``pinned=True`` the coordinator (every thread of this process) runs on
CPU 1 and the worker on CPU 0: what the coordinator takes from training on a
shared core is then out of the worker's times.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KINDS = ("epoch", "stream", "window")


def pin_this_process(cpus: set[int]) -> None:
    """Every thread of this process (and those it starts later) on `cpus`."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task), cpus)


def unpin_this_process() -> None:
    pin_this_process(set(range(os.cpu_count() or 1)))


def coordinator_callbacks(kind: str) -> list[Any]:
    """The coordinator's callbacks for each configuration of the issue's table."""
    from distcb.callbacks import Callback, EarlyStopping

    class BatchLosses(Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.last = (logs or {}).get("loss")

    class BatchObserver(BatchLosses):
        decides_on_batch = False

    early = EarlyStopping(monitor="loss", patience=100)
    return {
        "epoch": [early],  # epoch-level callbacks only: no batch logs travel
        "stream": [early, BatchObserver()],  # every batch streamed, no window
        "window": [early, BatchLosses()],  # every batch streamed, window rule on
    }[kind]


class StepJob:
    """One worker process and the fits the caller asks of it.

    Args:
        pinned: coordinator on CPU 1, worker on CPU 0.
        epochs: epochs of 400 steps per fit.
        env: extra environment of the worker (PYTHONPATH of another checkout...).
    """

    def __init__(self, *, pinned: bool = False, epochs: int = 3, env: dict[str, str] | None = None):
        self.pinned = pinned
        self.epochs = epochs
        self.env = env
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> StepJob:
        # The coordinator's modules (aiohttp builds an SSL context as it loads) load now,
        # not during the first fit: that CPU would count as the coordinator's and, on a
        # shared core, slow that fit down.
        import numpy  # noqa: F401

        import distcb.coordinator.engine  # noqa: F401
        import distcb.server  # noqa: F401

        if self.pinned:
            pin_this_process({1})
        env = dict(os.environ)
        env.update({"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"})
        env.update({"OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"})
        env.setdefault("PYTHONPATH", ROOT)
        env.update(self.env or {})
        command = [sys.executable, os.path.join(ROOT, "bench", "step_worker.py")]
        command += ["--epochs", str(self.epochs)]
        if self.pinned:
            command += ["--pin", "0"]
        self.process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        await self._answer()  # ready
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            await self._ask({"kind": "quit"}, answer=False)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self.pinned:
            unpin_this_process()

    async def _ask(self, command: dict[str, Any], answer: bool = True) -> dict[str, Any]:
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()
        return await self._answer() if answer else {}

    async def _answer(self) -> dict[str, Any]:
        assert self.process is not None
        assert self.process.stdout is not None
        while True:
            line = await self.process.stdout.readline()
            if not line:
                raise RuntimeError("the step worker exited")
            text = line.decode().strip()
            if text.startswith("{"):
                result: dict[str, Any] = json.loads(text)
                return result

    async def plain(self) -> dict[str, Any]:
        return await self._ask({"kind": "plain"})

    async def naive_http(self, url: str) -> dict[str, Any]:
        return await self._ask({"kind": "naive_http", "url": url})

    async def hooks(self, kind: str, steps: int = 20000) -> dict[str, Any]:
        """The worker's hooks in a loop with no training (bench/step_worker.py); adds the
        coordinator's CPU µs per step."""
        from distcb.coordinator.engine import Coordinator
        from distcb.protocol.config import Config
        from distcb.server import WebSocketServer

        config = Config()
        coordinator = Coordinator(coordinator_callbacks(kind), world_size=1, config=config)
        async with WebSocketServer(coordinator, config=config) as server:
            run = asyncio.ensure_future(coordinator.run())
            cpu = time.process_time()
            result = await self._ask(
                {
                    "kind": "hooks",
                    "address": server.address,
                    "token": server.token,
                    "steps": steps,
                }
            )
            await run
            cpu = time.process_time() - cpu
        result["coordinator_us"] = cpu * 1e6 / steps
        return result

    async def distcb(self, kind: str, *, profile: str | None = None) -> dict[str, Any]:
        """A fit with a WorkerCallback; adds the coordinator's CPU µs per step.

        With `profile` (a path prefix), py-spy samples the worker and this process
        during the fit: ``<profile>.worker.txt`` and ``<profile>.coordinator.txt``
        (collapsed stacks, one line per stack and thread, its sample count last).
        """
        from distcb.coordinator.engine import Coordinator
        from distcb.protocol.config import Config
        from distcb.server import WebSocketServer

        config = Config()
        coordinator = Coordinator(coordinator_callbacks(kind), world_size=1, config=config)
        assert self.process is not None
        spies = []
        if profile is not None:
            for role, pid in (("worker", self.process.pid), ("coordinator", os.getpid())):
                spies.append(await _start_py_spy(pid, f"{profile}.{role}.txt"))
        async with WebSocketServer(coordinator, config=config) as server:
            run = asyncio.ensure_future(coordinator.run())
            cpu = time.process_time()
            result = await self._ask(
                {"kind": "distcb", "address": server.address, "token": server.token}
            )
            await run
            cpu = time.process_time() - cpu
        for spy in spies:
            spy.send_signal(signal.SIGINT)
            await spy.wait()
        result["coordinator_us"] = cpu * 1e6 / (self.epochs * 400)
        result["steps"] = self.epochs * 400
        return result


def interleaved(rounds: int, kinds: Sequence[str], *, job: int = 0) -> list[tuple[int, list[str]]]:
    """Per round, the kinds in a rotated order (the first of the job differs per job), each
    fit between two plain fits: ``[(round, [plain, k1, plain, k2, ..., plain])]``."""
    out = []
    for r in range(rounds):
        shift = (r + job) % len(kinds)
        order = list(kinds[shift:]) + list(kinds[:shift])
        sequence = ["plain"]
        for kind in order:
            sequence += [kind, "plain"]
        out.append((r, sequence))
    return out


def ratios_of(sequence: list[str], results: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Each configuration's `key` over the mean of the plain fits around it."""
    out: dict[str, float] = {}
    for i, kind in enumerate(sequence):
        if kind == "plain":
            continue
        around = statistics.mean([results[i - 1][key], results[i + 1][key]])
        out[kind] = results[i][key] / around
    return out


PY_SPY_RATE_HZ = 500


async def _start_py_spy(pid: int, out: str) -> asyncio.subprocess.Process:
    executable = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    spy = await asyncio.create_subprocess_exec(
        executable,
        "record",
        "--pid",
        str(pid),
        "--threads",
        "--nonblocking",
        "--rate",
        str(PY_SPY_RATE_HZ),
        "--format",
        "raw",
        "--output",
        out,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)  # attached before the fit starts
    return spy
