"""The trial's side of a Tune trial: run a distcb job on Ray and report its epochs to Tune.

Runs in the trial process, where Tune's session lives. See `distcb.tune`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from distcb.callbacks.history import History
from distcb.launch.job_spec import JobSpec
from distcb.launch.options import LaunchOptions
from distcb.protocol.config import Config
from distcb.protocol.errors import CoordinatorLostError
from distcb.protocol.logs import from_json_value
from distcb.tune.checkpoint import ENV_CHECKPOINT, RestoredCheckpoint, stage_checkpoint
from distcb.tune.observer import TuneObserver


def run(
    train_fn: Callable[..., Any],
    *,
    num_workers: int,
    callbacks: Sequence[Any] = (),
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    config: Config | None = None,
    stateful_metrics: Sequence[str] = (),
    max_restarts: int = 0,
    resume: bool = False,
    backend: str = "ray",
    **options: Any,
) -> History:
    """Inside a Tune function trainable: run a distcb job and report it to Tune.

    ``backend="ray"`` (default): the coordinator and the workers are Ray actors of their
    own. ``backend="thread"``: the coordinator and the workers run in the trial process
    (workers as threads, see `distcb.launch.thread_backend`): for one-worker trials, no
    actor to start; the trial's own resources are the job's (``tune.with_resources``).

    With ``run_dir`` and ``max_restarts``, a lost worker actor restarts the job from its
    journal inside the trial; with ``resume=True`` and a ``run_dir`` that outlives the
    trial process (the trial's directory on shared storage), a trial Tune restores goes
    on from the journal, callbacks' state included. Epochs replayed after a restart are
    reported to Tune again.

    Takes `distcb.run`'s arguments and the Ray backend's options
    (``cpus_per_worker``, ``gpus_per_worker``, ``run_dir``, ``env``, ...; see
    `distcb.launch.options.LaunchOptions`).
    Returns the aggregated History once training ended normally.

    Raises:
        SystemExit: Tune stopped the trial (re-raised after the job was stopped).
        WorkerLostError: a worker failed (the trial errors; Tune may retry it).
    """
    from ray import tune

    from distcb.launch import ray_backend, thread_backend

    backends = {"ray": ray_backend.SUPPORTED_OPTIONS, "thread": thread_backend.SUPPORTED_OPTIONS}
    if backend not in backends:
        raise ValueError(f"backend must be one of {sorted(backends)}, received {backend!r}")
    if backend == "thread" and (max_restarts or resume):
        raise ValueError(
            "backend='thread' does not restart or resume workers (threads of the trial "
            f"process): received max_restarts={max_restarts!r}, resume={resume!r}"
        )
    launch_options = LaunchOptions.for_backend(backend, backends[backend], options)
    env = dict(launch_options.env or {})
    restore_dir: str | None = None
    epoch_offset = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        restore_dir = checkpoint.to_directory(tempfile.mkdtemp(prefix="distcb-restore-"))
        epoch_offset = RestoredCheckpoint.load(restore_dir).epoch + 1
        env[ENV_CHECKPOINT] = restore_dir
    try:
        job = JobSpec.build(
            train_fn,
            num_workers=num_workers,
            callbacks=callbacks,
            args=args,
            kwargs=kwargs,
            config=config,
            stateful_metrics=stateful_metrics,
            options=dataclasses.replace(launch_options, env=env),
            max_restarts=max_restarts,
            resume=resume,
        )
        history, stop = asyncio.run(_run_trial(job, epoch_offset=epoch_offset, backend=backend))
    finally:
        if restore_dir is not None:
            shutil.rmtree(restore_dir, ignore_errors=True)
    if stop is not None:
        raise stop
    assert history is not None
    return history


async def _run_trial(
    spec: JobSpec, *, epoch_offset: int, backend: str = "ray"
) -> tuple[History | None, SystemExit | None]:
    from distcb.launch.ray_backend import RayJob
    from distcb.launch.thread_backend import ThreadJob

    observer = TuneObserver()
    job_context: Any = (
        ThreadJob(spec, observer=observer)
        if backend == "thread"
        else RayJob(spec, observer=observer)
    )
    async with job_context as job:
        waiter = asyncio.ensure_future(job.wait())
        reporter = asyncio.ensure_future(_report_epochs(job, spec.config, epoch_offset))
        try:
            await asyncio.wait({waiter, reporter}, return_when=asyncio.FIRST_COMPLETED)
            error = waiter.exception() if waiter.done() else None
            if error is not None:
                raise error
            stop = await reporter  # after a normal end it reports the epochs left, then ends
            if stop is not None:
                # The coordinator stops the workers at the end of the epoch in flight.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(waiter), spec.config.stop_timeout_s)
                return None, stop
            return await waiter, None
        finally:
            for task in (waiter, reporter):
                task.cancel()
            await asyncio.gather(waiter, reporter, return_exceptions=True)


async def _report_epochs(job: Any, config: Config, epoch_offset: int) -> SystemExit | None:
    """Report each epoch to Tune; returns Tune's SystemExit when it stopped the trial."""
    while True:
        event = await _observe(job, config, "next_event", config.heartbeat_interval_s)
        if event is None:
            continue
        if event["kind"] == "end":
            return None
        epoch = int(event["epoch"])
        metrics = from_json_value(event["logs"])
        metrics["epoch"] = epoch_offset + epoch
        staged = stage_checkpoint(event["saved"], metrics) if event["saved"] else None
        try:
            stop = await asyncio.to_thread(_report, metrics, staged)
        finally:
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
        await _observe(job, config, "verdict", epoch, stop is not None)
        if stop is not None:
            return stop


async def _observe(job: Any, config: Config, method: str, *args: Any) -> Any:
    """Call the observer's `method` in the coordinator actor.

    A slow answer is not a lost coordinator: on a loaded machine its loop may take longer
    than `Config.heartbeat_timeout_s`. While the actor's process answers a ping (a
    separate concurrency group, not the coordinator's loop), keep waiting, up to
    `Config.stall_timeout_s` in all, the bound on a job that makes no progress.
    """
    from ray.exceptions import RayError

    observe_here = getattr(job, "observe", None)
    if observe_here is not None:  # the coordinator runs in this process (the thread backend)
        return await observe_here(method, *args)
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + max(config.stall_timeout_s, config.heartbeat_timeout_s)
    call = asyncio.ensure_future(job.coordinator.observe.remote(method, *args))
    try:
        while True:
            done, _ = await asyncio.wait({call}, timeout=config.heartbeat_timeout_s)
            if done:
                return call.result()
            alive = await _answers_ping(job, config.heartbeat_timeout_s)
            if not alive or loop.time() >= give_up_at:
                raise CoordinatorLostError(
                    f"the coordinator actor did not answer {method} within "
                    f"Config.heartbeat_timeout_s={config.heartbeat_timeout_s:g} s"
                    + (
                        ""
                        if not alive
                        else f" (nor within stall_timeout_s={config.stall_timeout_s:g} s)"
                    )
                )
    except RayError as exc:
        raise CoordinatorLostError(f"the coordinator actor failed: {type(exc).__name__}") from None
    finally:
        if not call.done():
            call.cancel()


async def _answers_ping(job: Any, timeout_s: float) -> bool:
    from ray.exceptions import RayError

    try:
        await asyncio.wait_for(job.coordinator.ping.remote(), timeout_s)
    except (TimeoutError, RayError):
        return False
    return True


def _report(metrics: dict[str, Any], checkpoint_dir: str | None) -> SystemExit | None:
    """``tune.report`` on a thread of the trial process; Tune's stop comes back as a value."""
    from ray import tune

    checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    try:
        tune.report(metrics, checkpoint=checkpoint)
    except SystemExit as exc:
        return exc
    return None
