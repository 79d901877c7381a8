"""The process backend: coordinator in this process, workers as child processes on loopback.

A restart of a resumable job stops every worker process of the attempt and starts every
rank again; with warm spares (`distcb.launch.spare_pool`: by default one per worker when
``max_restarts > 0``), each rank is given a process that already imported TensorFlow and
Keras instead of a cold one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from distcb.callbacks.history import History
from distcb.coordinator.engine import Coordinator
from distcb.coordinator.listener import JobListener
from distcb.keras.model_target import remove_stale_temporaries_under
from distcb.launch import interrupt, spec
from distcb.launch.child import ENV_LAUNCHER_PID
from distcb.launch.children import ChildProcess, describe_exit, stop_all
from distcb.launch.env import worker_env
from distcb.launch.job_spec import JobSpec
from distcb.launch.keras_distribution import AttemptPorts
from distcb.launch.progress import JobProgress, is_interactive
from distcb.launch.spare import ENV_WARM_IMPORTS, READY_LINE
from distcb.launch.spare_pool import SparePool, assign, spare_command, warm_imports
from distcb.protocol import exit_codes
from distcb.worker.context import WorkerContext

SUPPORTED_OPTIONS = frozenset(
    {
        "tf_config",
        "keras_distribution",
        "gpus_per_worker",
        "threads_per_worker",
        "run_dir",
        "env",
        "output",
        "progress",
        "warm_spares",
    }
)
_logger = logging.getLogger(__name__)


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


class _Child(ChildProcess):
    """One worker process of the group, and the attempt it belongs to."""

    attempt = 0


async def launch(job: JobSpec) -> History:
    """`distcb.run(..., backend="process")`."""
    from distcb.server import WebSocketServer

    options, config, num_workers = job.options, job.config, job.num_workers
    gpus = options.gpus_per_worker
    if gpus is not None and not float(gpus).is_integer():
        raise ValueError(
            f"the process backend gives whole GPUs (CUDA_VISIBLE_DEVICES): gpus_per_worker must "
            f"be a whole number, received {gpus!r}"
        )
    spares = warm_spare_count(options.warm_spares, num_workers, job.max_restarts)
    coordinator = Coordinator(
        list(job.callbacks),
        world_size=num_workers,
        config=config,
        stateful_metrics=job.stateful_metrics,
        state_dir=state_dir(options.run_dir) if job.resumable else None,
        max_restarts=job.max_restarts,
        resume=job.resume,
    )
    if options.run_dir:  # what a killed save left behind (os.walk of a missing dir: nothing)
        await asyncio.to_thread(remove_stale_temporaries_under, options.run_dir)
    with tempfile.TemporaryDirectory(prefix="distcb-") as spec_dir:
        spec_path = await asyncio.to_thread(
            spec.write, spec_dir, job.train_fn, job.args, job.kwargs
        )
        async with WebSocketServer(coordinator, config=config) as server:
            if is_interactive(sys.stderr):  # a log file must never hold the token
                print(
                    f"distcb: status page http://{server.address}/?token={server.token}",
                    file=sys.stderr,
                    flush=True,
                )
            ports = free_ports(num_workers) if options.tf_config else []
            threads = options.threads_per_worker or max(1, (os.cpu_count() or 1) // num_workers)
            jax_ports = AttemptPorts() if options.keras_distribution else None

            def environment(rank: int, attempt: int) -> dict[str, str]:
                # A restart starts every process again, around a new JAX coordination service.
                jax_address = None if jax_ports is None else jax_ports.address(attempt)
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
                    gpus=None if gpus is None else range(rank * int(gpus), (rank + 1) * int(gpus)),
                    keras_distribution=jax_address,
                )
                child_env = {**defaults, **os.environ, **variables}
                child_env["PYTHONUNBUFFERED"] = "1"
                child_env[ENV_LAUNCHER_PID] = str(os.getpid())
                # The child must import what the parent imports (multiprocessing does too).
                child_env["PYTHONPATH"] = os.pathsep.join(
                    [p for p in sys.path if p] + [child_env.get("PYTHONPATH", "")]
                ).rstrip(os.pathsep)
                return child_env

            group = _WorkerGroup(
                coordinator,
                num_workers,
                spec_path,
                environment,
                options.output or sys.stdout,
                config.stop_timeout_s,
                spares=spares,
            )
            coordinator.add_listener(group)
            progress = JobProgress(coordinator, show=options.progress)
            coordinator.add_listener(progress)
            interrupt.attach(coordinator, progress)  # Ctrl-C: a coordinated stop
            try:  # from the first spawn on: children never outlive this call
                await group.start()
                return await coordinator.run()
            finally:
                await group.stop()


def warm_spare_count(warm_spares: int | None, num_workers: int, max_restarts: int) -> int:
    """How many warm spares the job keeps: `warm_spares`, or with None one per worker when
    the job may restart (``max_restarts > 0``), else none.

    Raises:
        ValueError: more spares than workers (a spare is kept for one rank), or spares for
            a job that never restarts.
    """
    if warm_spares is None:
        return num_workers if max_restarts > 0 else 0
    if warm_spares > num_workers:
        raise ValueError(
            f"warm_spares={warm_spares} is more than num_workers={num_workers}: a spare is "
            f"kept for one rank; use at most {num_workers}, or None for one per worker"
        )
    if warm_spares and not max_restarts:
        raise ValueError(
            f"warm_spares={warm_spares} needs max_restarts > 0 (spares only serve a restart); "
            f"received max_restarts={max_restarts}"
        )
    return warm_spares


def state_dir(run_dir: str | None) -> str:
    """Where a resumable job's journal goes: ``<run_dir>/state``.

    Raises:
        ValueError: no run directory (a resumable job needs one, shared by every worker).
    """
    if not run_dir:
        raise ValueError(
            "max_restarts and resume need run_dir: the journal and the workers' backups go there"
        )
    return os.path.join(os.path.abspath(run_dir), "state")


class _WorkerGroup(JobListener):
    """The worker processes of one job: started, watched, and started again on a restart
    (ranks 0 to `spares` - 1 from their warm spare, when it is there)."""

    def __init__(
        self,
        coordinator: Coordinator,
        num_workers: int,
        spec_path: str,
        environment: Callable[[int, int], dict[str, str]],
        out: TextIO,
        grace_s: float,
        *,
        spares: int = 0,
    ):
        self.coordinator = coordinator
        self.num_workers = num_workers
        self.spec_path = spec_path
        self.spec_dir = os.path.dirname(spec_path)
        self.environment = environment
        self.out = out
        self.grace_s = grace_s
        self.attempt = 0
        self.children: list[_Child] = []
        self.watchers: list[asyncio.Task[None]] = []
        self._respawn: asyncio.Task[None] | None = None
        self.pool: SparePool | None = None
        self._pool_filled_for = -1  # the attempt whose spares the pool holds or is starting
        if spares:
            imports = ",".join(warm_imports(sys.modules))
            self.pool = SparePool(range(spares), lambda rank: self._spawn_spare(rank, imports))
        self.warm_ranks: list[int] = []  # the ranks of this attempt that started from a spare

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.warm_ranks = []
        for rank in range(self.num_workers):
            with contextlib.suppress(FileNotFoundError):  # a failure of an ended attempt
                os.unlink(spec.failure_path(self.spec_dir, rank))
            env = self.environment(rank, self.attempt)
            child = await self._assign_spare(rank, env)
            if child is None:
                child = await asyncio.to_thread(_spawn, rank, self.spec_path, env, self.out)
            else:
                self.warm_ranks.append(rank)
            child.attempt = self.attempt
            self.children.append(child)
            self.watchers.append(loop.create_task(self._watch(child), name=f"distcb-watch-{rank}"))
        _logger.debug(
            "distcb: attempt %d started at %.6f, ranks %s from warm spares",
            self.attempt,
            time.time(),
            self.warm_ranks,
        )

    async def _assign_spare(self, rank: int, env: dict[str, str]) -> _Child | None:
        spare = self.pool.take(rank) if self.pool is not None else None
        if spare is None:
            return None
        assert isinstance(spare, _Child)
        if await asyncio.to_thread(assign, spare, env, self.spec_path):
            return spare
        await asyncio.to_thread(stop_all, [spare], 0.0, 1.0)  # it died meanwhile: reap it
        return None

    def _spawn_spare(self, rank: int, imports: str) -> _Child:
        # The environment of the rank in the attempt the spare is kept for: what a cold
        # worker of that attempt would read while importing.
        env = self.environment(rank, self.attempt + 1)
        env[ENV_WARM_IMPORTS] = imports
        return _Child(
            rank,
            spare_command(),
            env,
            self.out,
            prefix=f"[spare for rank {rank}] ",
            ready_line=READY_LINE,
            on_ready=lambda: _logger.debug(
                "distcb: warm spare for rank %d ready at %.6f", rank, time.time()
            ),
            stdin_pipe=True,
        )

    def epoch_released(self, epoch: int, logs: object, records: object) -> None:
        """Every worker of the attempt trains: start the spares of the next one."""
        if self.pool is not None and self._pool_filled_for != self.attempt:
            self._pool_filled_for = self.attempt
            self.pool.fill()

    async def stop(self) -> None:
        """Stop the job's processes: the workers and the spares."""
        await self._stop_workers()
        if self.pool is not None:
            await self.pool.close()

    async def _stop_workers(self) -> None:
        if self._respawn is not None and self._respawn is not asyncio.current_task():
            self._respawn.cancel()
            await asyncio.gather(self._respawn, return_exceptions=True)
        children, self.children = self.children, []
        watchers, self.watchers = self.watchers, []
        began = time.perf_counter()
        await _stop_children(children, self.grace_s)
        _logger.debug(
            "distcb: the workers of attempt %d stopped in %.3f s at %.6f",
            self.attempt,
            time.perf_counter() - began,
            time.time(),
        )
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

    def restarting(self, attempt: int, failure: BaseException) -> None:
        """The coordinator restarts the job: every worker process starts again."""
        self.attempt = attempt + 1  # reports of the ended attempt's processes are dropped
        self._respawn = asyncio.get_running_loop().create_task(self._start_again())

    async def _start_again(self) -> None:
        await self._stop_workers()
        await self.start()

    async def _watch(self, child: _Child) -> None:
        code = await asyncio.to_thread(child.process.wait)
        if child.attempt != self.attempt:
            return
        coordinator, attempt = self.coordinator, child.attempt
        if code == 0:
            await coordinator.report_exit(
                child.rank, "exited before it finished training (exit code 0)", attempt=attempt
            )
            return
        # Reading the failure file awaits: the job may restart meanwhile, and this process
        # was then one of the ended attempt (the coordinator drops its report by `attempt`).
        data = await asyncio.to_thread(spec.read_failure, self.spec_dir, child.rank)
        if data is not None:  # its training function raised: a restart would raise again
            coordinator.report_lost(
                child.rank,
                f"raised {data.get('error')}",
                data.get("traceback"),
                retryable=False,
                attempt=attempt,
            )
        elif code < 0:
            coordinator.report_lost(child.rank, describe_exit(code), attempt=attempt)
        elif code == exit_codes.PREEMPTED:
            coordinator.report_lost(
                child.rank, "exited with code 143 (preempted or interrupted)", attempt=attempt
            )
        else:
            coordinator.report_lost(
                child.rank, f"exited with code {code}", retryable=False, attempt=attempt
            )


def _spawn(rank: int, spec_path: str, env: dict[str, str], out: TextIO) -> _Child:
    # Its own process group (ChildProcess): stopping it stops what it started too.
    return _Child(rank, [sys.executable, "-m", "distcb.launch.child", spec_path], env, out)


async def _stop_children(children: Sequence[_Child], grace_s: float) -> None:
    await asyncio.to_thread(stop_all, children, grace_s / 2)
