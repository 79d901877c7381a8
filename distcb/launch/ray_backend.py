"""The Ray backend: the coordinator is an async Ray actor, each worker a Ray actor.

    history = distcb.run(train_fn, num_workers=4, backend="ray", cpus_per_worker=2,
                         callbacks=[EarlyStopping(...)])

Where things run. The coordinator actor (no CPU reserved) runs the callback
chain; the callbacks travel to it pickled by Ray and, when the job ends,
every attribute of theirs that pickles travels back into the objects passed
to `distcb.run`, so ``early_stopping.stopped_epoch`` reads right in the
driver. Worker actors set the ``DISTCB_*`` variables (``DISTCB_ADDRESS`` is
``ray:<coordinator actor name>``), ``TF_CONFIG`` when asked (ports reserved
on each actor's own node) and call `train_fn`; their `WorkerCallback` finds
the Ray transport from the address. Weights never leave the workers;
snapshots stay where they were taken.

Options (`distcb.launch.options.LaunchOptions`): ``tf_config``,
``gpus_per_worker``, ``cpus_per_worker`` (default 1), ``resources_per_worker``,
``runtime_env``, ``run_dir``, ``env``, ``ray_init``.

Cluster: an existing one is used when this process is connected
(`ray.init` already called), or when ``RAY_ADDRESS`` or a ``ray start``
cluster on this machine is found; otherwise a local one is started (with
`ray_init` options) and shut down at the end. Files written by the chief
(checkpoints) and the coordinator (CSV, TensorBoard) land on their own
nodes: give a path on shared storage on a multi-node cluster.

Failure: a worker actor that raises, dies or is killed is reported with its
rank (`WorkerLostError`, with the traceback when it raised); the others stop
at a common step; every actor started here is killed before `run_ray`
returns or raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from distcb.callbacks.history import History
from distcb.launch.env import apply_env, worker_env
from distcb.launch.job_spec import JobSpec
from distcb.launch.process import state_dir
from distcb.protocol.errors import (
    CoordinatorLostError,
    DistcbError,
    JobFailed,
    JobFailedError,
    JobInterrupted,
)
from distcb.worker.context import WorkerContext, WorkerHost, context_from_env, hosting

__all__ = ["SUPPORTED_OPTIONS", "RayJob", "launch"]

SUPPORTED_OPTIONS = frozenset(
    {
        "tf_config",
        "gpus_per_worker",
        "cpus_per_worker",
        "resources_per_worker",
        "runtime_env",
        "run_dir",
        "env",
        "ray_init",
    }
)


class _WorkerRunner:
    """The body of a worker actor: one rank, one `train_fn` call."""

    def __init__(self, rank: int):
        self.rank = rank

    def reserve_port(self) -> tuple[str, int]:
        """This actor's node address and a port free on it (for TF_CONFIG)."""
        import ray

        with socket.socket() as sock:
            sock.bind(("", 0))
            port = int(sock.getsockname()[1])
        return ray.util.get_node_ip_address(), port

    def run(
        self,
        train_fn: Callable[..., Any],
        args: Sequence[Any],
        kwargs: dict[str, Any],
        env: dict[str, str],
        env_defaults: dict[str, str],
    ) -> dict[str, Any]:
        """Run `train_fn` with the job's environment; a raise comes back as a value."""
        apply_env(env, env_defaults)
        host = WorkerHost(context_from_env())
        try:
            with hosting(host):
                train_fn(*args, **kwargs)
        except (JobInterrupted, JobFailed, CoordinatorLostError, JobFailedError) as exc:
            # Not this worker's fault: the job restarts, failed elsewhere, or lost its
            # coordinator.
            return {"error": None, "interrupted": f"{type(exc).__name__}: {exc}"}
        except BaseException as exc:  # reported with its traceback, like the process backend
            host.report_failure(exc)
            return {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": "".join(traceback.format_exception(exc)),
            }
        return {"error": None, "traceback": None}


def _ensure_ray(init_options: dict[str, Any] | None) -> bool:
    """Connect to Ray unless connected; True when this call did (and must shut down)."""
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False}
    options.update(init_options or {})
    ray.init(**options)  # RAY_ADDRESS / a `ray start` cluster if any, else a local one
    return True


def _describe(exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line}"


class RayJob:
    """One distcb job on Ray: its coordinator actor, its worker actors, their end.

    Use as ``async with RayJob(spec) as job: history = await job.wait()``; leaving
    the block kills every actor the job started (after `Config.stop_timeout_s`
    for workers still finishing). `observer` hooks an extra coordinator callback
    in (see `distcb.transport.ray.CoordinatorActor`); `job.coordinator` is the
    coordinator actor's handle.

    Args:
        job: the job (`JobSpec`).
        observer: an extra coordinator callback's owner (a Tune trial's `TuneObserver`).
    """

    def __init__(self, job: JobSpec, *, observer: Any = None):
        self.job = job
        self.train_fn = job.train_fn
        self.num_workers = job.num_workers
        self.callbacks = list(job.callbacks)  # the caller's objects: their states come back
        self.args = job.args
        self.kwargs = job.kwargs
        self.config = job.config
        self.stateful_metrics = job.stateful_metrics
        self.options = options = job.options
        self.run_dir = os.path.abspath(options.run_dir) if options.run_dir else None
        self.observer = observer
        self.name = f"distcb-coordinator-{secrets.token_hex(6)}"
        self.coordinator: Any = None
        self.workers: list[Any] = []
        self.outcome: dict[str, Any] | None = None  # what the coordinator actor returned
        self._token = secrets.token_hex(16)
        self._started_ray = False
        self.max_restarts = job.max_restarts
        self.resume = job.resume
        self.attempt = 0
        self._run: asyncio.Future[Any] | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._restarts: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RayJob:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- start

    async def start(self) -> None:
        """Start the coordinator actor, then the worker actors and their watchers."""
        options = self.options
        self._started_ray = _ensure_ray(dict(options.ray_init or {}))

        from distcb.launch.ray_actor import RayCoordinator

        self._common: dict[str, Any] = {"max_restarts": 0}
        if options.runtime_env is not None:
            self._common["runtime_env"] = dict(options.runtime_env)
        resumable = bool(self.max_restarts or self.resume)
        self.coordinator = RayCoordinator.options(
            name=self.name, num_cpus=0, **self._common
        ).remote(
            self.callbacks,
            world_size=self.num_workers,
            config=self.config.to_dict(),
            token=self._token,
            stateful_metrics=self.stateful_metrics,
            observer=self.observer,
            state_dir=state_dir(self.run_dir) if resumable else None,
            max_restarts=self.max_restarts,
            resume=self.resume,
        )
        self._run = asyncio.ensure_future(self.coordinator.run.remote())
        await self._start_workers()
        if resumable:
            self._restarts = asyncio.get_running_loop().create_task(
                self._follow_restarts(), name="distcb-ray-restarts"
            )

    async def _start_workers(self) -> None:
        """Start one worker actor per rank, run `train_fn` on each, and watch them."""
        import ray

        options = self.options
        runner = ray.remote(_WorkerRunner)
        suffix = f"{self.name.rsplit('-', 1)[-1]}-{self.attempt}"
        cpus = 1 if options.cpus_per_worker is None else options.cpus_per_worker
        for rank in range(self.num_workers):
            actor_options = dict(self._common)
            actor_options.update(
                name=f"distcb-worker-{suffix}-{rank}",
                num_cpus=cpus,
                num_gpus=options.gpus_per_worker or 0,
            )
            if options.resources_per_worker:
                actor_options["resources"] = dict(options.resources_per_worker)
            self.workers.append(runner.options(**actor_options).remote(rank))
        cluster = await self._tf_cluster() if options.tf_config else None
        loop = asyncio.get_running_loop()
        for rank, worker in enumerate(self.workers):
            context = WorkerContext(
                rank=rank,
                world_size=self.num_workers,
                address=f"ray:{self.name}",
                token=self._token,
                config=self.config,
                run_dir=self.run_dir,
            )
            env, defaults = worker_env(
                context,
                extra=options.env,
                tf_cluster=cluster,
                threads=max(1, int(cpus)),
            )
            ref = worker.run.remote(self.train_fn, self.args, self.kwargs, env, defaults)
            self._watchers.append(
                loop.create_task(
                    self._watch(rank, ref, self.attempt), name=f"distcb-ray-watch-{rank}"
                )
            )

    async def _follow_restarts(self) -> None:
        """When the coordinator restarts the job, every worker actor starts again."""
        while True:
            attempt = await self.coordinator.next_attempt.remote(
                self.attempt, self.config.heartbeat_timeout_s
            )
            if attempt is None or attempt <= self.attempt:
                if self._run is not None and self._run.done():
                    return
                continue
            self.attempt = attempt
            await self._stop_workers()
            await self._start_workers()

    async def _stop_workers(self) -> None:
        """Let the workers end (up to `Config.stop_timeout_s`), then kill their actors."""
        import ray

        watchers, self._watchers = self._watchers, []
        if watchers:
            _, pending = await asyncio.wait(watchers, timeout=self.config.stop_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        workers, self.workers = self.workers, []
        for actor in workers:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)

    async def _tf_cluster(self) -> list[str]:
        try:
            addresses = await asyncio.wait_for(
                asyncio.gather(*(w.reserve_port.remote() for w in self.workers)),
                self.config.join_timeout_s,
            )
        except TimeoutError:
            raise DistcbError(
                f"worker actors did not start within Config.join_timeout_s="
                f"{self.config.join_timeout_s:g} s (not enough free resources?)"
            ) from None
        return [f"{host}:{port}" for host, port in addresses]

    async def _watch(self, rank: int, ref: Any, attempt: int) -> None:
        from ray.exceptions import RayError

        traceback_text = None
        retryable = True
        try:
            result = await ref
        except RayError as exc:
            reason = f"its Ray actor died ({_describe(exc)})"
        else:
            if result.get("interrupted"):
                reason = f"stopped: {result['interrupted']}"
            elif result.get("error") is None:
                # Normally it said Done first and the job ends now; give that message time
                # to reach the coordinator's engine ahead of this report.
                assert self._run is not None
                await asyncio.wait([self._run], timeout=self.config.heartbeat_interval_s)
                if self._run.done():
                    return
                reason = "returned from train_fn before it finished training"
            else:
                reason = f"raised {result['error']}"
                traceback_text = result.get("traceback")
                retryable = False
        if attempt != self.attempt:
            return  # a worker of an attempt that has ended
        with contextlib.suppress(RayError, TimeoutError):
            await asyncio.wait_for(
                self.coordinator.report_lost.remote(
                    rank, reason, traceback_text, retryable, attempt
                ),
                self.config.reply_timeout_s,
            )

    # ---------------------------------------------------------------- end

    async def wait(self) -> History:
        """The job's History; raises the job's error (WorkerLostError names the rank)."""
        from ray.exceptions import RayError

        assert self._run is not None, "start() first"
        try:
            outcome: dict[str, Any] = await self._run
        except RayError as exc:
            raise CoordinatorLostError(
                f"the coordinator actor {self.name} failed: {_describe(exc)}"
            ) from None
        self.outcome = outcome
        for callback, state in zip(self.callbacks, outcome["callback_states"], strict=False):
            with contextlib.suppress(Exception):
                vars(callback).update(state)
        error = outcome.get("error")
        if error is not None:
            raise error
        histories = [cb for cb in self.callbacks if isinstance(cb, History)]
        if histories:
            history = histories[0]
        else:
            history = History()
            history.history = outcome["history"]
            history.epoch = outcome["epoch"]
        history.worker_reports = outcome["worker_reports"]
        history.decisions = outcome["decisions"]
        return history

    async def close(self) -> None:
        """Let workers finish (up to `Config.stop_timeout_s`), then kill every actor started."""
        import ray

        if self._restarts is not None:
            self._restarts.cancel()
            await asyncio.gather(self._restarts, return_exceptions=True)
            self._restarts = None
        await self._stop_workers()
        if self._run is not None and not self._run.done():
            self._run.cancel()
            await asyncio.gather(self._run, return_exceptions=True)
        for actor in [*self.workers, self.coordinator]:
            if actor is not None:
                with contextlib.suppress(Exception):
                    ray.kill(actor, no_restart=True)
        self.workers = []
        self.coordinator = None
        if self._started_ray:
            self._started_ray = False
            ray.shutdown()


async def launch(job: JobSpec) -> History:
    """`distcb.run(..., backend="ray")`: run `job.train_fn` on `job.num_workers` Ray actors."""
    async with RayJob(job) as running:
        return await running.wait()
