"""`distcb.run`: train `train_fn` on several workers under one coordinator."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from distcb.callbacks.history import History
from distcb.launch import job_runner
from distcb.launch.job_spec import JobSpec
from distcb.launch.options import LaunchOptions
from distcb.protocol.config import Config

# backend name -> module with `SUPPORTED_OPTIONS` and `async def launch(job: JobSpec)`.
BACKENDS = {
    "process": "distcb.launch.process",
    "ray": "distcb.launch.ray_backend",
    "thread": "distcb.launch.thread_backend",
}


def run(
    train_fn: Callable[..., Any],
    *,
    num_workers: int,
    callbacks: Sequence[Any] = (),
    backend: str = "process",
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    config: Config | None = None,
    stateful_metrics: Sequence[str] = (),
    max_restarts: int = 0,
    resume: bool = False,
    **options: Any,
) -> History:
    """Run `train_fn(*args, **kwargs)` on `num_workers` workers; return the aggregated History.

    Each worker calls ``model.fit(..., callbacks=[distcb.keras.WorkerCallback()])``;
    the `callbacks` run once, on the coordinator in this process, on logs aggregated
    over all workers, and their decisions reach every worker at the same step.

    Args:
        train_fn: the function each worker runs (module level, or defined in a
            notebook: it is then pickled by value).
        num_workers: how many workers.
        callbacks: coordinator callbacks (``distcb.callbacks.X`` or keras callbacks).
        backend: "process" (child processes on this machine), "ray" (Ray actors), or
            "thread" (threads of this process, for debugging and one-worker jobs; see
            `distcb.launch.thread_backend`).
        args, kwargs: passed to `train_fn`.
        config: timeouts and limits (`distcb.Config`).
        stateful_metrics: metrics taken from the chief instead of averaged.
        max_restarts: how many times a worker that is lost (killed, evicted, silent) or
            preempted may restart the job from its last epoch barrier; the job then ends
            as if nothing had happened. Needs ``run_dir`` (the journal and the workers'
            backups go there). See the README's "Failures and restarts".
        resume: go on from the journal in ``run_dir`` (a job whose launching process
            died); with no journal there yet, start afresh.
        **options: backend options, see `distcb.launch.options.LaunchOptions`
            (process: ``tf_config``, ``keras_distribution``, ``gpus_per_worker``,
            ``threads_per_worker``, ``run_dir``, ``env``, ``output``, ``warm_spares``; ray:
            ``tf_config``, ``gpus_per_worker``, ``cpus_per_worker``, ``resources_per_worker``,
            ``runtime_env``, ``run_dir``, ``env``, ``ray_init``; thread: ``run_dir``).
            ``progress=False`` (process and thread) turns off the progress line on
            stderr (`distcb.launch.progress`).

    Notebooks and other code with a running event loop: the job then runs on a private
    thread with its own loop, and this call waits for it (or ``await distcb.arun(...)``).

    Ctrl-C (or interrupting a notebook cell) stops the job at the next epoch end on every
    worker, as an EarlyStopping would: `on_train_end` runs and the History is returned;
    a second Ctrl-C stops the workers at once and raises KeyboardInterrupt.

    Raises:
        TypeError: an option the backend does not support.
        WorkerLostError: a worker raised, died or went silent (names the rank; carries
            its traceback when it raised). The other workers are stopped.
        JoinTimeoutError: not every worker joined in time.
        KeyboardInterrupt: a second Ctrl-C (the workers were stopped at once).
    """
    make = _prepare(
        train_fn,
        num_workers=num_workers,
        callbacks=callbacks,
        backend=backend,
        args=args,
        kwargs=kwargs,
        config=config,
        stateful_metrics=stateful_metrics,
        max_restarts=max_restarts,
        resume=resume,
        **options,
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        history: History = job_runner.run_here(make)
        return history
    history = job_runner.JobThread(make).wait()
    return history


async def arun(
    train_fn: Callable[..., Any],
    *,
    num_workers: int,
    callbacks: Sequence[Any] = (),
    backend: str = "process",
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    config: Config | None = None,
    stateful_metrics: Sequence[str] = (),
    max_restarts: int = 0,
    resume: bool = False,
    **options: Any,
) -> History:
    """`distcb.run` for code that runs in an event loop: ``history = await distcb.arun(...)``.

    The job runs on a private thread with its own event loop, so this loop stays free
    while it trains. The arguments are `distcb.run`'s. Cancelling the awaiting task stops
    the job at the next epoch end (a second cancellation: at once), then raises
    CancelledError.
    """
    make = _prepare(
        train_fn,
        num_workers=num_workers,
        callbacks=callbacks,
        backend=backend,
        args=args,
        kwargs=kwargs,
        config=config,
        stateful_metrics=stateful_metrics,
        max_restarts=max_restarts,
        resume=resume,
        **options,
    )
    history: History = await job_runner.JobThread(make).wait_async()
    return history


def _prepare(
    train_fn: Callable[..., Any],
    *,
    num_workers: int,
    callbacks: Sequence[Any] = (),
    backend: str = "process",
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    config: Config | None = None,
    stateful_metrics: Sequence[str] = (),
    max_restarts: int = 0,
    resume: bool = False,
    **options: Any,
) -> Callable[[], Coroutine[Any, Any, History]]:
    """Check `distcb.run`'s arguments; a function making the job's coroutine."""
    module_name = BACKENDS.get(backend)
    if module_name is None:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, received {backend!r}")
    module = importlib.import_module(module_name)
    job = JobSpec.build(
        train_fn,
        num_workers=num_workers,
        callbacks=callbacks,
        args=args,
        kwargs=kwargs,
        config=config,
        stateful_metrics=stateful_metrics,
        options=LaunchOptions.for_backend(backend, module.SUPPORTED_OPTIONS, options),
        max_restarts=max_restarts,
        resume=resume,
    )

    def make() -> Coroutine[Any, Any, History]:
        coroutine: Coroutine[Any, Any, History] = module.launch(job)
        return coroutine

    return make
