"""The process backend: coordinator in this process, workers as child processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from distcb.callbacks.history import History
from distcb.core.config import Config
from distcb.core.coordinator import Coordinator
from distcb.launch.context import (
    ENV_ADDRESS,
    ENV_CONFIG,
    ENV_RANK,
    ENV_RUN_DIR,
    ENV_TOKEN,
    ENV_WORLD_SIZE,
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


def tf_config_for(rank: int, ports: Sequence[int]) -> str:
    return json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": rank},
        }
    )


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


async def run_processes(
    train_fn: Callable[..., Any],
    *,
    num_workers: int,
    callbacks: Sequence[Any],
    args: Sequence[Any],
    kwargs: dict[str, Any],
    config: Config,
    tf_config: bool = False,
    gpus_per_worker: int | None = None,
    threads_per_worker: int | None = None,
    run_dir: str | None = None,
    env: dict[str, str] | None = None,
    stateful_metrics: Sequence[str] = (),
    output: TextIO | None = None,
) -> History:
    from distcb.transport.websocket import WebSocketServer

    out = output or sys.stdout
    coordinator = Coordinator(
        callbacks, world_size=num_workers, config=config, stateful_metrics=stateful_metrics
    )
    loop = asyncio.get_running_loop()
    children: list[_Child] = []
    with tempfile.TemporaryDirectory(prefix="distcb-") as spec_dir:
        spec_path = await asyncio.to_thread(_write_spec, spec_dir, train_fn, args, kwargs)
        async with WebSocketServer(coordinator, config=config) as server:
            ports = free_ports(num_workers) if tf_config else []
            threads = threads_per_worker or max(1, (os.cpu_count() or 1) // num_workers)
            watchers: list[asyncio.Task[None]] = []
            try:  # from the first spawn on: children never outlive this call
                for rank in range(num_workers):
                    child_env = _child_env(
                        rank,
                        num_workers,
                        server.address,
                        server.token,
                        config,
                        threads=threads,
                        run_dir=run_dir,
                        ports=ports,
                        gpus_per_worker=gpus_per_worker,
                        extra=env,
                    )
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


def _child_env(
    rank: int,
    num_workers: int,
    address: str,
    token: str,
    config: Config,
    *,
    threads: int,
    run_dir: str | None,
    ports: Sequence[int],
    gpus_per_worker: int | None,
    extra: dict[str, str] | None,
) -> dict[str, str]:
    """The environment of worker `rank`: the DISTCB_* variables and what the options ask."""
    child_env = dict(os.environ)
    child_env.update(extra or {})
    child_env.update(
        {
            ENV_ADDRESS: address,
            ENV_TOKEN: token,
            ENV_RANK: str(rank),
            ENV_WORLD_SIZE: str(num_workers),
            ENV_CONFIG: json.dumps(config.to_dict()),
            "PYTHONUNBUFFERED": "1",
        }
    )
    child_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # The child must import what the parent imports (multiprocessing does the same).
    child_env["PYTHONPATH"] = os.pathsep.join(
        [p for p in sys.path if p] + [child_env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        child_env.setdefault(name, str(threads))
    if run_dir:
        child_env[ENV_RUN_DIR] = os.path.abspath(run_dir)
    if ports:
        child_env["TF_CONFIG"] = tf_config_for(rank, ports)
    if gpus_per_worker is not None:
        devices = range(rank * gpus_per_worker, (rank + 1) * gpus_per_worker)
        child_env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
    return child_env


def _write_spec(
    spec_dir: str, train_fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> str:
    """Pickle what the children run into a file only this user can read."""
    spec_path = os.path.join(spec_dir, "spec.pkl")
    main = sys.modules.get("__main__")
    # Only a function defined in the launching script needs that script re-run.
    main_path = getattr(main, "__file__", None) if _defined_in_main(train_fn) else None
    with open(os.open(spec_path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as handle:
        pickle.dump(
            {
                "payload": pickle.dumps((train_fn, tuple(args), dict(kwargs))),
                "main_path": os.path.abspath(main_path) if main_path else None,
            },
            handle,
        )
    return spec_path


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


def _read_failure(spec_dir: str, rank: int) -> dict[str, Any] | None:
    path = os.path.join(spec_dir, f"rank-{rank}.json")
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        data: dict[str, Any] = json.load(handle)
    return data


def _defined_in_main(fn: Any) -> bool:
    return getattr(fn, "__module__", None) in ("__main__", "__mp_main__")


async def _watch(child: _Child, coordinator: Coordinator, spec_dir: str) -> None:
    code = await asyncio.to_thread(child.process.wait)
    if code == 0:
        coordinator.report_lost(child.rank, "exited before it finished training (exit code 0)")
        return
    traceback_text = None
    data = await asyncio.to_thread(_read_failure, spec_dir, child.rank)
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
