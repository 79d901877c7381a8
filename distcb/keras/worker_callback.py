"""`WorkerCallback`: the one callback each worker adds to `model.fit`.

A thin adapter from Keras's hooks to the worker protocol of `distcb.worker`:
it joins the coordinator, streams batch logs without blocking, sends the
epoch logs and waits at the epoch barrier, and applies every decision at its
effect point (stop, set the learning rate, snapshot/restore weights, save on
the chief, atomically). Works with Keras 3 and with tf_keras (the Keras 2 API,
required for MultiWorkerMirroredStrategy).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from distcb.keras import flavours
from distcb.keras import models as keras_models
from distcb.keras.chief import ChiefWork
from distcb.keras.model_target import KerasModelTarget
from distcb.protocol.config import Config
from distcb.protocol.errors import (
    CoordinatorLostError,
    JobFailed,
    JobFailedError,
    JobInterrupted,
)
from distcb.protocol.logs import clean_logs
from distcb.protocol.messages import EpochEnd, JoinParams, Preempted
from distcb.protocol.worker_data import NO_EXTRAS
from distcb.transport import connector_for
from distcb.worker.backup import BackupStore
from distcb.worker.context import WorkerContext, current_host, worker_context
from distcb.worker.session import Connector, WorkerSession
from distcb.worker.threaded import ThreadedSession

_T = TypeVar("_T")


class WorkerCallback:
    """Connects a worker's `model.fit` to the distcb coordinator.

    Args:
        address: the coordinator's "host:port" (default: ``DISTCB_ADDRESS``).
        token: the job's token (default: ``DISTCB_TOKEN``).
        rank, world_size: default ``DISTCB_RANK`` / ``DISTCB_WORLD_SIZE``.
        samples: training samples this worker sees per epoch (weights its metrics in
            the aggregate; unknown means equal weights).
        val_samples: validation samples per epoch on this worker.
        batch_size: lets batch logs carry samples seen so far.
        initial_epoch: the `initial_epoch` given to `fit` when resuming (Keras does not
            tell callbacks); the coordinator then counts epochs from there.
        config: a `distcb.Config` (default: from ``DISTCB_CONFIG``, else defaults).
        flavour: "keras3", "tf_keras" or "auto" (tf_keras if it is imported, else Keras 3).
        connect: a coroutine function opening the connection (backends other than websocket).
        seed: when set, every epoch begins with Python's, NumPy's and the framework's global
            random generators seeded from (seed, epoch) (`keras.utils.set_random_seed`), so
            that what draws from them during an epoch does not depend on what ran before:
            a resumed job draws what an uninterrupted one would. See the README's
            "Failures and restarts" for what this covers and what it cannot.
    """

    def __new__(cls, *args: Any, flavour: str = "auto", **kwargs: Any) -> WorkerCallback:
        if cls is WorkerCallback:
            cls = flavours.worker_class(WorkerCallback, flavour)
        return super().__new__(cls)

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        samples: int | None = None,
        val_samples: int | None = None,
        batch_size: int | None = None,
        initial_epoch: int = 0,
        config: Config | None = None,
        flavour: str = "auto",
        connect: Connector | None = None,
        seed: int | None = None,
    ):
        super().__init__()
        # tf_keras's Callback.__init__ sets this on the instance (False), hiding the class
        # attribute: without it tf_keras reads every step's logs on the training thread.
        self._supports_tf_logs = True
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be an int >= 0 or None, received {seed!r}")
        for name, value in (
            ("samples", samples),
            ("val_samples", val_samples),
            ("batch_size", batch_size),
            ("initial_epoch", initial_epoch),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(f"{name} must be an int >= 0 or None, received {value!r}")
        context = worker_context()
        self.context = WorkerContext(
            rank=context.rank if rank is None else rank,
            world_size=context.world_size if world_size is None else world_size,
            address=address or context.address,
            token=token or context.token,
            config=config or context.config,
            run_dir=context.run_dir,
            tls_ca=context.tls_ca,
        )
        if connect is None and not self.context.address:
            raise ValueError(
                "WorkerCallback needs the coordinator's address: pass address='host:port' or set "
                "DISTCB_ADDRESS (distcb.run sets it for you)."
            )
        self.samples = samples
        self.val_samples = val_samples
        self.batch_size = batch_size
        self.initial_epoch = initial_epoch
        self._connect = connect
        self._worker: ThreadedSession | None = None
        self._session: WorkerSession | None = None
        self._chief: ChiefWork | None = None  # what the coordinator callbacks asked of the chief
        self._epoch = 0
        self._first_epoch: int | None = None
        self.link_statistics: dict[str, float] = {}
        self.job_error: str | None = None
        self.seed = seed
        self.resumed_after: int | None = None  # the barrier a resumed job went on from
        self._preempted = False
        self._previous_sigterm: Any = None

    # Set by Keras (the flavour's Callback base provides them).
    model: Any
    params: dict[str, Any]

    # Keras 3: our batch-end hook only buffers, so Keras may run it on its thread pool.
    async_safe = True
    # tf_keras: pass logs as tensors; they become floats on the IO thread, not here.
    _supports_tf_logs = True

    @property
    def is_chief(self) -> bool:
        return self.context.rank == 0

    @property
    def applied(self) -> list[tuple[int, int, Any]]:
        """(epoch, step, decision) of every decision this worker applied."""
        if self._session is None:
            return []
        return [(a.epoch, a.step, a.decision) for a in self._session.applier.applied]

    # ------------------------------------------------------------------ hooks

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        context = self.context
        connect = self._connect or connector_for(
            context.address or "", context.token or "", context.config, tls_ca=context.tls_ca
        )
        store = None
        if context.run_dir:
            owner = 0 if keras_models.is_synchronous(self.model) else context.rank
            store = BackupStore(os.path.join(context.run_dir, "backups"), context.rank, owner)
        self._session = WorkerSession(
            rank=context.rank,
            world_size=context.world_size,
            connect=connect,
            config=context.config,
            target=KerasModelTarget(self.model),
            store=store,
        )
        self._worker = ThreadedSession(self._session)
        host = current_host()
        if host is not None:
            host.register(self._worker)
        else:
            _UNCAUGHT.register(self._worker)
        params = dict(self.params or {})
        start = self._retry_me_on_loss(
            self._worker.start,
            JoinParams(
                epochs=params.get("epochs"),
                initial_epoch=self.initial_epoch,
                steps=params.get("steps"),
                verbose=params.get("verbose", 0),
                samples=None if self.samples is None else float(self.samples),
                val_samples=None if self.val_samples is None else float(self.val_samples),
                batch_size=self.batch_size,
                metrics=keras_models.metric_names(self.model),
                directions=keras_models.metric_directions(self.model),  # type: ignore[arg-type]
                learning_rate=keras_models.get_learning_rate(self.model),
                flavour=flavours.flavour_of(self),  # type: ignore[arg-type]
                seed=self.seed,
                host=f"{socket.gethostname()}:{os.getpid()}",
            ),
        )
        if self.is_chief:
            self._chief = ChiefWork(
                self.model,
                start.worker_requests,
                max_profile_bytes=context.config.max_message_bytes // 2,
            )
        if start.resume is not None:
            self._session.applier.resume(start.resume)
            self.resumed_after = start.resume.epoch
            first = start.resume.first_epoch(int(params.get("epochs") or 0))
            keras_models.resume_at_epoch(self.model, first)
        self._listen_for_sigterm()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._first_epoch is None:
            self._first_epoch = epoch
            keras_models.end_resume(self.model)
        if self.seed is not None:
            keras_models.seed_everything(self.seed, epoch)
        self._epoch = epoch
        self._retry_me_on_loss(self._require_worker().begin_epoch, epoch)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._chief is not None:
            self._chief.batch_begin(batch)
        self._retry_me_on_loss(self._require_worker().begin_batch, batch)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        session = self._session
        if session is None:
            return
        samples = None
        if self.batch_size is not None:
            samples = float((batch + 1) * self.batch_size)
            if self.samples is not None:
                samples = min(samples, float(self.samples))
        session.end_batch(batch, dict(logs or {}), samples)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        worker = self._require_worker()
        extras = NO_EXTRAS if self._chief is None else self._chief.epoch_extras(epoch)
        self._retry_me_on_loss(
            worker.end_epoch,
            EpochEnd(
                rank=self.context.rank,
                epoch=epoch,
                logs=clean_logs(logs),
                samples=None if self.samples is None else float(self.samples),
                val_samples=None if self.val_samples is None else float(self.val_samples),
                extras=extras,
            ),
        )

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        worker = self._require_worker()
        host = current_host()
        keras_models.end_resume(self.model)
        try:
            self.job_error = self._retry_me_on_loss(worker.end_training)
            self.link_statistics = worker.session.statistics()
            worker.finish(self.report())
        finally:
            self._restore_sigterm()
            if host is not None:
                host.unregister(worker)
            _UNCAUGHT.unregister(worker)
            self._worker = None
            if self._chief is not None:
                self._chief.close()
                self._chief = None
        protocol = worker.session.protocol
        if protocol.restart or self._preempted:
            why = "preempted" if self._preempted else "the job restarts from its backups"
            reason = f"distcb rank {self.context.rank}: {why} ({protocol.abort_reason})"
            print(f"{reason}; exiting with code 143 (retry me)", file=sys.stderr, flush=True)
            raise JobInterrupted(reason)
        if self.job_error is not None:
            # The job failed elsewhere: `fit` must not return as if training had finished.
            raise self._job_failed(JobFailedError(f"the job failed: {self.job_error}"))

    def _retry_me_on_loss(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Call `fn`; a lost coordinator ends `fit` with JobInterrupted ("retry me", 143):
        whoever runs this worker starts it again, and it rejoins and resumes (a
        restarted coordinator, a pod). Catching CoordinatorLostError still works: it is
        the JobInterrupted's cause."""
        try:
            return fn(*args)
        except JobFailedError as exc:
            raise self._job_failed(exc) from exc
        except CoordinatorLostError as exc:
            reason = f"CoordinatorLostError: {exc}"
            print(f"distcb {reason}; exiting with code 143 (retry me)", file=sys.stderr, flush=True)
            raise JobInterrupted(reason) from exc

    def _job_failed(self, error: JobFailedError) -> JobFailed:
        """Say why the job failed, in one line (the traceback that matters was printed once,
        where it was raised), and end `fit` with exit code 1: a restart would fail again."""
        reason = f"distcb rank {self.context.rank}: {error.reason}"
        print(
            f"{reason}; exiting with code 1 (failed: retrying will not help)",
            file=sys.stderr,
            flush=True,
        )
        failed = JobFailed(reason)
        failed.__cause__ = error
        return failed

    # ------------------------------------------------------------------ preemption

    def _listen_for_sigterm(self) -> None:
        """SIGTERM (a pod going away) asks the coordinator for a common stop instead of
        ending this process at once (installed after the strategy, whose own handler
        would otherwise keep training)."""
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only (workers run as threads)

        def preempted(signum: int, frame: Any) -> None:
            if self._preempted:
                return
            self._preempted = True
            session = self._session
            if session is not None:
                session.send_nowait(Preempted(rank=self.context.rank))

        self._previous_sigterm = signal.signal(signal.SIGTERM, preempted)

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    # ------------------------------------------------------------------ reports

    def _require_worker(self) -> ThreadedSession:
        if self._worker is None:
            raise RuntimeError("WorkerCallback hooks ran before on_train_begin")
        return self._worker

    def report(self) -> dict[str, Any]:
        """What this worker ends with: its learning rate and a digest of its weights."""
        digest = hashlib.sha256()
        for weight in self.model.get_weights():
            digest.update(weight.tobytes())
        applier = self._session.applier if self._session is not None else None
        return {
            "learning_rate": keras_models.get_learning_rate(self.model),
            "weights_sha256": digest.hexdigest(),
            "epochs_run": self._epoch + 1,
            "applied": [a.to_json() for a in applier.applied] if applier else [],
            "saved": list(applier.saved_paths) if applier else [],
            "backups": list(applier.backups) if applier else [],
            "resumed_after": self.resumed_after,
            "link": dict(self.link_statistics),
        }


class _UncaughtReporter:
    """A script run without a launcher's host (`distcb launch train.py`, a plain `python`):
    when `fit` raises and nothing catches it, tell the coordinator through the sessions
    still open (`WorkerFailed`, with the traceback), before Python prints the traceback
    and exits. The coordinator then names this rank and what it raised, instead of "it
    disconnected", and does not restart a job that would raise again."""

    def __init__(self) -> None:
        self._sessions: list[ThreadedSession] = []
        self._lock = threading.Lock()
        self._previous: Any = None

    def register(self, session: ThreadedSession) -> None:
        with self._lock:
            self._sessions.append(session)
            if self._previous is None:
                self._previous = sys.excepthook
                sys.excepthook = self._hook

    def unregister(self, session: ThreadedSession) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._sessions.remove(session)

    def _hook(self, kind: type[BaseException], error: BaseException, tb: Any) -> None:
        if not isinstance(error, KeyboardInterrupt):
            with self._lock:
                sessions, self._sessions = self._sessions, []
            for session in sessions:
                with contextlib.suppress(Exception):  # the traceback must still be printed
                    session.fail(error)
        (self._previous or sys.__excepthook__)(kind, error, tb)


_UNCAUGHT = _UncaughtReporter()
