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

Options: ``run_dir`` and ``progress`` only (the others set environment variables, devices or thread
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
from distcb.launch import interrupt
from distcb.launch.job_spec import JobSpec
from distcb.launch.progress import JobProgress
from distcb.protocol.errors import JobFailed, JobFailedError, WorkerLostError
from distcb.transport.inproc import InProcessListener
from distcb.worker.context import WorkerContext, WorkerHost, hosting

SUPPORTED_OPTIONS = frozenset({"run_dir", "progress"})

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
        except (JobFailed, JobFailedError):
            pass  # the job failed elsewhere (the coordinator knows): not this worker's error
        except BaseException as exc:
            self.error = exc
            host.report_failure(exc)
            text = "".join(traceback.format_exception(exc))
        with contextlib.suppress(RuntimeError):  # the coordinator's loop is gone: job over
            self._loop.call_soon_threadsafe(self._ended, self.context.rank, self.error, text)


async def launch(job: JobSpec) -> History:
    """`distcb.run(..., backend="thread")`."""
    if job.resumable:
        # A thread cannot be killed and started afresh, nor its TensorFlow state reset: a
        # restart needs worker processes.
        raise ValueError(
            "backend='thread' does not restart or resume workers (threads of this process): "
            f"received max_restarts={job.max_restarts!r}, resume={job.resume!r}; use "
            "backend='process' or 'ray' for a resumable job"
        )
    async with ThreadJob(job) as running:
        progress = JobProgress(running.coordinator, show=job.options.progress)
        running.coordinator.add_listener(progress)
        interrupt.attach(running.coordinator, progress)  # Ctrl-C: a coordinated stop
        return await running.wait()


class ThreadJob:
    """A running thread-backend job: its coordinator on this event loop, its workers on
    threads. `observer` (optional) is hooked in as on the Ray backend's coordinator actor:
    ``observer.callback()`` joins the chain after History, ``observer.attach(coordinator)``
    is called, and `observe` calls its coroutine methods (what a Tune trial does).

    Use: ``async with ThreadJob(spec) as job: history = await job.wait()``; leaving the
    block stops what still runs (bounded by `Config.stop_timeout_s`).
    """

    def __init__(self, job: JobSpec, *, observer: Any = None):
        chain = list(job.callbacks)
        if observer is not None:
            if not any(isinstance(cb, History) for cb in chain):
                chain.append(History())  # the observer sees the logs as History records them
            chain.append(observer.callback())
        self.coordinator = Coordinator(
            chain,
            world_size=job.num_workers,
            config=job.config,
            stateful_metrics=job.stateful_metrics,
        )
        if observer is not None:
            observer.attach(self.coordinator)
        self.observer = observer
        self.config = job.config
        self._call = job.call
        self._num_workers = job.num_workers
        self._run_dir = job.options.run_dir
        self._workers: list[_WorkerThread] = []
        self._reports: set[asyncio.Task[None]] = set()
        self._listener: InProcessListener | None = None
        self._run: asyncio.Task[History] | None = None

    async def __aenter__(self) -> ThreadJob:
        loop = asyncio.get_running_loop()
        listener = InProcessListener(self.coordinator.serve)
        await listener.__aenter__()
        self._listener = listener
        for rank in range(self._num_workers):
            context = WorkerContext(
                rank=rank,
                world_size=self._num_workers,
                address=listener.address,
                token=listener.token,
                config=self.config,
                run_dir=self._run_dir,
            )
            self._workers.append(_WorkerThread(context, self._call, loop, self._ended))
        self._run = loop.create_task(self.coordinator.run(), name="distcb-coordinator")
        for worker in self._workers:
            worker.thread.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        run = self._run
        if run is not None and not run.done():
            run.cancel()
        if run is not None:
            await asyncio.gather(run, return_exceptions=True)
        if self._listener is not None:  # workers still connected see their coordinator go
            await self._listener.__aexit__(None, None, None)
        await _join(self._workers, self.config.stop_timeout_s)
        for task in list(self._reports):
            task.cancel()
        await asyncio.gather(*self._reports, return_exceptions=True)

    async def wait(self) -> History:
        """The job's History once it ended; raises its error (a worker's own exception is
        the `WorkerLostError`'s ``__cause__``, for ``pdb.post_mortem``)."""
        assert self._run is not None, "use ThreadJob in `async with`"
        try:
            return await asyncio.shield(self._run)
        except WorkerLostError as lost:
            cause = next((w.error for w in self._workers if w.context.rank == lost.rank), None)
            if cause is not None:
                raise lost from cause
            raise

    async def observe(self, method: str, *args: Any) -> Any:
        """Call ``observer.<method>(*args)`` (a coroutine), as the Ray coordinator actor's
        ``observe`` does."""
        if self.observer is None or method.startswith("_"):
            raise ValueError(f"this job has no observer method {method!r}")
        return await getattr(self.observer, method)(*args)

    def _ended(self, rank: int, error: BaseException | None, text: str | None) -> None:
        if error is not None:
            reason = f"raised {type(error).__name__}: {error}"
            self.coordinator.report_lost(rank, reason, text)
            return
        # As for a process that exits 0: lost only if it had not said goodbye.
        task = asyncio.get_running_loop().create_task(
            self.coordinator.report_exit(rank, "train_fn returned before training finished")
        )
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)


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
