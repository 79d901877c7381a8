"""The process backend: coordinator in this process, workers as child processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from distcb.callbacks.history import History
from distcb.coordinator.engine import Coordinator
from distcb.keras.model_target import remove_stale_temporaries_under
from distcb.launch import spec
from distcb.launch.child import ENV_LAUNCHER_PID
from distcb.launch.env import worker_env
from distcb.launch.options import DEFAULT_OPTIONS, LaunchOptions
from distcb.protocol.config import Config
from distcb.worker.context import WorkerContext

SUPPORTED_OPTIONS = frozenset(
    {"tf_config", "gpus_per_worker", "threads_per_worker", "run_dir", "env", "output"}
)


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on loopback (for TF_CONFIG)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


class _Child:
    """One worker process, its output pump and its exit watcher."""

    def __init__(self, rank: int, process: subprocess.Popen[str], out: TextIO):
        self.rank = rank
        self.process = process
        self.pump = threading.Thread(
            target=self._pump, args=(out,), name=f"distcb-out-{rank}", daemon=True
        )
        self.pump.start()

    def _pump(self, out: TextIO) -> None:
        # Keep draining whatever happens: a child blocked on a full pipe would hang the job.
        assert self.process.stdout is not None
        prefix = f"[rank {self.rank}] "
        with self.process.stdout:
            for line in self.process.stdout:
                with contextlib.suppress(Exception):
                    out.write(prefix + line)
                    out.flush()


async def launch(
    train_fn: Callable[..., Any],
    *,
    num_workers: int,
    callbacks: Sequence[Any],
    args: Sequence[Any],
    kwargs: dict[str, Any],
    config: Config,
    stateful_metrics: Sequence[str] = (),
    options: LaunchOptions = DEFAULT_OPTIONS,
) -> History:
    """`distcb.run(..., backend="process")`."""
    from distcb.transport.websocket import WebSocketServer

    gpus = options.gpus_per_worker
    if gpus is not None and not float(gpus).is_integer():
        raise ValueError(
            f"the process backend gives whole GPUs (CUDA_VISIBLE_DEVICES): gpus_per_worker must "
            f"be a whole number, received {gpus!r}"
        )
    out = options.output or sys.stdout
    coordinator = Coordinator(
        callbacks, world_size=num_workers, config=config, stateful_metrics=stateful_metrics
    )
    loop = asyncio.get_running_loop()
    children: list[_Child] = []
    if options.run_dir:  # what a killed save left behind (os.walk of a missing dir: nothing)
        await asyncio.to_thread(remove_stale_temporaries_under, options.run_dir)
    with tempfile.TemporaryDirectory(prefix="distcb-") as spec_dir:
        spec_path = await asyncio.to_thread(spec.write, spec_dir, train_fn, args, kwargs)
        async with WebSocketServer(coordinator, config=config) as server:
            ports = free_ports(num_workers) if options.tf_config else []
            threads = options.threads_per_worker or max(1, (os.cpu_count() or 1) // num_workers)
            watchers: list[asyncio.Task[None]] = []
            try:  # from the first spawn on: children never outlive this call
                for rank in range(num_workers):
                    context = WorkerContext(
                        rank=rank,
                        world_size=num_workers,
                        address=server.address,
                        token=server.token,
                        config=config,
                        run_dir=options.run_dir,
                    )
                    variables, defaults = worker_env(
                        context,
                        extra=options.env,
                        tf_cluster=[f"127.0.0.1:{p}" for p in ports] if ports else None,
                        threads=threads,
                        gpus=None
                        if gpus is None
                        else range(rank * int(gpus), (rank + 1) * int(gpus)),
                    )
                    child_env = {**defaults, **os.environ, **variables}
                    child_env["PYTHONUNBUFFERED"] = "1"
                    child_env[ENV_LAUNCHER_PID] = str(os.getpid())
                    # The child must import what the parent imports (multiprocessing does too).
                    child_env["PYTHONPATH"] = os.pathsep.join(
                        [p for p in sys.path if p] + [child_env.get("PYTHONPATH", "")]
                    ).rstrip(os.pathsep)
                    children.append(
                        await asyncio.to_thread(_spawn, rank, spec_path, child_env, out)
                    )
                watchers = [
                    loop.create_task(
                        _watch(child, coordinator, spec_dir), name=f"distcb-watch-{child.rank}"
                    )
                    for child in children
                ]
                return await coordinator.run()
            finally:
                await _stop_children(children, config.stop_timeout_s)
                for watcher in watchers:
                    watcher.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
                for child in children:
                    child.pump.join(5.0)


def _spawn(rank: int, spec_path: str, env: dict[str, str], out: TextIO) -> _Child:
    process = subprocess.Popen(
        [sys.executable, "-m", "distcb.launch.child", spec_path],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group: stopping it stops its children too
    )
    return _Child(rank, process, out)


async def _watch(child: _Child, coordinator: Coordinator, spec_dir: str) -> None:
    code = await asyncio.to_thread(child.process.wait)
    if code == 0:
        await coordinator.report_exit(
            child.rank, "exited before it finished training (exit code 0)"
        )
        return
    traceback_text = None
    data = await asyncio.to_thread(spec.read_failure, spec_dir, child.rank)
    if data is not None:
        traceback_text = data.get("traceback")
        reason = f"training raised {data.get('error')}"
    elif code < 0:
        reason = f"was killed by signal {signal.Signals(-code).name}"
    else:
        reason = f"exited with code {code}"
    coordinator.report_lost(child.rank, reason, traceback_text)


async def _stop_children(children: Sequence[_Child], grace_s: float) -> None:
    def wait_all(timeout: float) -> None:
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout)

    await asyncio.to_thread(wait_all, grace_s / 2)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [c for c in children if c.process.poll() is None]
        if not alive:
            return
        for child in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.process.pid, sig)
        await asyncio.to_thread(wait_all, 5.0)
