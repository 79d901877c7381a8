"""The thread backend: the coordinator and every worker in the calling process.

    history = distcb.run(train_fn, num_workers=1, backend="thread", callbacks=[...])

Each worker is a thread of this process that runs ``train_fn(*args, **kwargs)``;
the coordinator runs on the calling thread's event loop, exactly the coordinator
the other backends run, and the workers reach it over the in-process transport
(`distcb.transport.inproc`: no socket, no port, no child process). What it is for:

* **debugging**: ``breakpoint()`` in `train_fn`, or in a coordinator callback,
  stops in this process, with its terminal. While a worker sits in pdb its IO
  thread keeps sending heartbeats, so the job waits for it instead of counting
  it as lost;
* **quick checks and one-worker jobs** (a Tune trial with one worker): no
  process to start, no second ``import tensorflow``; the job starts in
  milliseconds (docs/BENCHMARKS.md, "Thread backend").

Why "thread" (and not "local" or "inprocess"): it says what a worker is, as
"process" and "ray" do. Threads share one Python interpreter: workers run
concurrently only where TensorFlow releases the GIL, share the process's
environment, random seeds and TensorFlow state, and cannot use
MultiWorkerMirroredStrategy (one collective runtime per process). Use it for one
worker, or for a few independent Keras 3 replicas; use ``process`` otherwise.

Options: ``run_dir`` only (the others set environment variables, devices or thread
pools per process, which threads cannot have each).

Failure: `train_fn` raising on a worker thread is reported with its rank and
traceback (`WorkerLostError`, whose ``__cause__`` is the exception itself, for
``pdb.post_mortem``); the other workers are stopped at a common step. Threads
cannot be killed: a worker that ignores the stop is waited for at most
`Config.stop_timeout_s`, then left behind as a daemon thread (with a warning).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from distcb.callbacks.history import History
from distcb.coordinator.engine import Coordinator
from distcb.launch.options import DEFAULT_OPTIONS, LaunchOptions
from distcb.protocol.config import Config
from distcb.protocol.errors import WorkerLostError
from distcb.transport.inproc import InProcessListener
from distcb.worker.context import WorkerContext, WorkerHost, hosting

SUPPORTED_OPTIONS = frozenset({"run_dir"})

logger = logging.getLogger("distcb.launch")


class _WorkerThread:
    """One worker: `train_fn` on a thread, as its launcher hosts it. When `train_fn`
    ends, `ended(rank, error, traceback_text)` is called on the coordinator's loop."""

    def __init__(
        self,
        context: WorkerContext,
        call: Callable[[], Any],
        loop: asyncio.AbstractEventLoop,
        ended: Callable[[int, BaseException | None, str | None], None],
    ):
        self.context = context
        self.error: BaseException | None = None
        self._call = call
        self._loop = loop
        self._ended = ended
        self.thread = threading.Thread(
            target=self._run, name=f"distcb-worker-{context.rank}", daemon=True
        )

    def _run(self) -> None:
        host = WorkerHost(self.context)
        text = None
        try:
            with hosting(host):  # a context variable: this thread's own
                self._call()
        except BaseException as exc:
            self.error = exc
            host.report_failure(exc)
            text = "".join(traceback.format_exception(exc))
        with contextlib.suppress(RuntimeError):  # the coordinator's loop is gone: job over
            self._loop.call_soon_threadsafe(self._ended, self.context.rank, self.error, text)


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
    max_restarts: int = 0,
    resume: bool = False,
) -> History:
    """`distcb.run(..., backend="thread")`."""
    if max_restarts or resume:
        # A thread cannot be killed and started afresh, nor its TensorFlow state reset: a
        # restart needs worker processes.
        raise ValueError(
            "backend='thread' does not restart or resume workers (threads of this process): "
            f"received max_restarts={max_restarts!r}, resume={resume!r}; use "
            "backend='process' or 'ray' for a resumable job"
        )
    coordinator = Coordinator(
        callbacks, world_size=num_workers, config=config, stateful_metrics=stateful_metrics
    )
    loop = asyncio.get_running_loop()
    workers: list[_WorkerThread] = []
    reports: set[asyncio.Task[None]] = set()

    def ended(rank: int, error: BaseException | None, text: str | None) -> None:
        if error is not None:
            reason = f"training raised {type(error).__name__}: {error}"
            coordinator.report_lost(rank, reason, text)
            return
        # As for a process that exits 0: lost only if it had not said goodbye.
        task = loop.create_task(
            coordinator.report_exit(rank, "train_fn returned before training finished")
        )
        reports.add(task)
        task.add_done_callback(reports.discard)

    async with InProcessListener(coordinator.serve) as listener:
        for rank in range(num_workers):
            context = WorkerContext(
                rank=rank,
                world_size=num_workers,
                address=listener.address,
                token=listener.token,
                config=config,
                run_dir=options.run_dir,
            )
            workers.append(_WorkerThread(context, lambda: train_fn(*args, **kwargs), loop, ended))
        try:
            for worker in workers:
                worker.thread.start()
            return await coordinator.run()
        except WorkerLostError as lost:
            cause = next((w.error for w in workers if w.context.rank == lost.rank), None)
            if cause is not None:
                raise lost from cause  # the worker's own exception, for pdb.post_mortem
            raise
        finally:
            await _join(workers, config.stop_timeout_s)
            for task in list(reports):
                task.cancel()
            await asyncio.gather(*reports, return_exceptions=True)


async def _join(workers: Sequence[_WorkerThread], timeout_s: float) -> None:
    def join_all() -> list[int]:
        deadline = time.monotonic() + timeout_s
        for worker in workers:
            if worker.thread.ident is not None:
                worker.thread.join(max(0.0, deadline - time.monotonic()))
        return [w.context.rank for w in workers if w.thread.is_alive()]

    stuck = await asyncio.to_thread(join_all)
    if stuck:
        logger.warning(
            "worker threads of ranks %s did not end within Config.stop_timeout_s=%g s after the "
            "job ended; they are left running as daemon threads",
            stuck,
            timeout_s,
        )
