"""Ray Tune: a distcb job per trial, its aggregated epoch metrics reported to Tune.

    from ray import tune
    import distcb.tune

    def trainable(config):                       # a Tune function trainable
        distcb.tune.run(train_fn, num_workers=2, num_cpus_per_worker=0.5,
                        kwargs={"lr": config["lr"]}, callbacks=[ModelCheckpoint(...)])

    tuner = tune.Tuner(
        tune.with_resources(trainable, distcb.tune.placement(2, cpus_per_worker=0.5)),
        param_space={"lr": tune.loguniform(1e-3, 1e-1)},
        tune_config=tune.TuneConfig(metric="val_loss", mode="min", scheduler=ASHAScheduler()),
    )

Resources: the trial process only waits; the workers are Ray actors the trial
starts. Reserve them with the trial: ``tune.with_resources(trainable,
distcb.tune.placement(num_workers, cpus_per_worker=...))`` (a
`PlacementGroupFactory` of one bundle for the trial and one per worker; Tune
schedules the trial's child actors into it). Without it the worker actors
compete with other trials for the cluster's free CPUs and may wait forever.
Pass the same ``num_cpus_per_worker`` / ``num_gpus_per_worker`` to `run`.

Reporting: every epoch's aggregated logs (exactly the History row, plus
``epoch``) go to ``tune.report`` from the trial process, where Tune's session
lives. A report waits for the chief to carry out that epoch's decisions, so
when ModelCheckpoint saved a file at that epoch, the report carries a Tune
checkpoint: a directory with the saved file(s) and ``distcb_checkpoint.json``
(epoch, file names, metrics). The job runs on while Tune digests a report;
the coordinator waits for Tune's answer on epoch e at the end of epoch e + 1
at the latest (training is never more than one epoch ahead of Tune). After
a worker failed, epochs merged from the survivors alone are not reported.

Stopping: when a scheduler or stopper ends the trial, ``tune.report`` raises
SystemExit. The coordinator then sets ``stop_training`` at the end of the
epoch in flight, so every worker stops at that common point and
``on_train_end`` runs; `run` waits for that (at most
`Config.stop_timeout_s`), kills every actor of the job and re-raises the
SystemExit. Tune reclaims a stopped trial's process and placement group
within tens of milliseconds, which kills the job's actors with it (Ray
ties an actor's life to the process that created it): no actor outlives its
trial either way, but a graceful ending is only guaranteed when it is fast.
Workers of a stopped trial may therefore run one epoch past its last report.

Resuming: when Tune restores a trial (``FailureConfig(max_failures=...)``,
``Tuner.restore``, PBT), `run` fetches ``tune.get_checkpoint()`` into a local
directory and passes it to the workers as ``DISTCB_TUNE_CHECKPOINT``;
``distcb.tune.restored_checkpoint()`` in `train_fn` returns its files and the
last epoch it covers, so `train_fn` can load the weights and train the epochs
left. Epoch numbers in distcb restart at 0 (Keras ``initial_epoch`` is not
supported by the coordinator yet); the ``epoch`` reported to Tune continues
from the checkpoint. The directory must be readable by the workers (same
node, or shared storage).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from distcb.callbacks.base import Callback, Logs
from distcb.callbacks.history import History
from distcb.core.config import Config
from distcb.core.decisions import EffectPoint, SaveModel
from distcb.core.errors import CoordinatorLostError
from distcb.core.messages import decode_logs, encode_logs

__all__ = [
    "CHECKPOINT_INFO",
    "ENV_CHECKPOINT",
    "RestoredCheckpoint",
    "placement",
    "restored_checkpoint",
    "run",
]

ENV_CHECKPOINT = "DISTCB_TUNE_CHECKPOINT"
CHECKPOINT_INFO = "distcb_checkpoint.json"


# --------------------------------------------------------------------------- resources


def placement(
    num_workers: int,
    *,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    resources_per_worker: dict[str, float] | None = None,
    trial_cpus: float = 0.5,
    strategy: str = "PACK",
) -> Any:
    """The `tune.PlacementGroupFactory` a trial running `run` must reserve.

    One bundle for the trial process (``trial_cpus``; it only waits), one per
    worker. The coordinator actor reserves nothing. Use with
    ``tune.with_resources(trainable, placement(...))``.
    """
    from ray import tune

    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be an int >= 1, received {num_workers!r}")
    worker: dict[str, float] = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        worker["GPU"] = gpus_per_worker
    worker.update(resources_per_worker or {})
    return tune.PlacementGroupFactory(
        [{"CPU": trial_cpus}] + [dict(worker) for _ in range(num_workers)], strategy=strategy
    )


# --------------------------------------------------------------------------- restoring


@dataclass(frozen=True)
class RestoredCheckpoint:
    """The Tune checkpoint a restored trial resumes from, as its workers see it.

    Attributes:
        directory: a local copy of the checkpoint directory.
        epoch: the last epoch (0-based, counted over the trial's life) it covers.
        files: full paths of the model files ModelCheckpoint saved.
        metrics: the metrics reported with it.
    """

    directory: str
    epoch: int
    files: tuple[str, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str | None:
        """The saved model file (the last one when there are several), or None."""
        return self.files[-1] if self.files else None

    @classmethod
    def load(cls, directory: str) -> RestoredCheckpoint:
        info_path = os.path.join(directory, CHECKPOINT_INFO)
        if not os.path.exists(info_path):
            raise ValueError(
                f"{directory} holds no {CHECKPOINT_INFO}: not a checkpoint reported by distcb.tune"
            )
        with open(info_path) as handle:
            info = json.load(handle)
        files = tuple(os.path.join(directory, name) for name in info.get("files", []))
        return cls(directory, int(info["epoch"]), files, decode_logs(info.get("metrics", {})))


def restored_checkpoint() -> RestoredCheckpoint | None:
    """In `train_fn`: the checkpoint this Tune trial resumes from, or None on a fresh start."""
    directory = os.environ.get(ENV_CHECKPOINT)
    return RestoredCheckpoint.load(directory) if directory else None


# --------------------------------------------------------------------------- coordinator side


class _TuneBridge(Callback):
    """Last in the coordinator's chain (after History): hands each epoch to the trial."""

    decides_on_batch = False

    def __init__(self, observer: TuneObserver):
        super().__init__()
        self._observer = observer

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self._observer.notify()

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if self._observer.barrier(epoch):
            self.model.stop_training = True
        else:
            self._observer.publish(epoch, dict(logs or {}))

    def on_train_end(self, logs: Logs | None = None) -> None:
        self._observer.end()


class TuneObserver:
    """Lives in the coordinator actor; the trial process calls `next_event` and `verdict`.

    Callback-thread side: `barrier`, `publish`, `end`. Event-loop side (through
    the actor's ``observe``): `next_event`, `verdict`.
    """

    def __init__(self) -> None:
        self._actor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {}  # built fresh inside the actor

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._actor = None

    def callback(self, actor: Any) -> Callback:
        self._actor = actor
        self._loop = asyncio.get_running_loop()
        self._cond = threading.Condition()
        self._events: collections.deque[tuple[int, Logs]] = collections.deque()
        self._awaiting: int | None = None  # the epoch reported and not answered yet
        self._verdicts: dict[int, bool] = {}
        self._stopping = False
        self._ended = False
        self._barrier_epoch = -1
        self._decisions_seen = 0
        self._saved_seen = 0
        return _TuneBridge(self)

    # ---------------------------------------------------------------- callback thread

    def notify(self) -> None:
        self._loop.call_soon_threadsafe(self._actor.changed.set)

    def barrier(self, epoch: int) -> bool:
        """At epoch `epoch`'s end: wait for Tune's answer on the epoch before; True to stop.

        No timeout: the trial process answers while it lives, and when it dies Ray
        takes this actor with it.
        """
        with self._cond:
            self._barrier_epoch = epoch
            self.notify()
            while self._awaiting is not None and self._awaiting not in self._verdicts:
                self._cond.wait()
            return self._stopping

    def publish(self, epoch: int, logs: Logs) -> None:
        if self._actor.coordinator.failure is not None:
            return  # merged from the survivors only: not a result to rank trials by
        with self._cond:
            self._events.append((epoch, logs))
            self._awaiting = epoch
        self.notify()

    def end(self) -> None:
        with self._cond:
            self._ended = True
        self.notify()

    # ---------------------------------------------------------------- event loop

    async def verdict(self, actor: Any, epoch: int, stop: bool) -> None:
        with self._cond:
            self._verdicts[int(epoch)] = bool(stop)
            self._stopping = self._stopping or bool(stop)
            self._cond.notify_all()

    async def next_event(self, actor: Any, wait_s: float) -> dict[str, Any] | None:
        """The next epoch to report once its decisions were carried out; ``{"kind": "end"}``
        after the last; None when nothing came within `wait_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, float(wait_s))
        while True:
            actor.changed.clear()
            event = self._ready(actor.coordinator)
            if event is not None:
                return event
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(actor.changed.wait(), remaining)

    def _ready(self, coordinator: Any) -> dict[str, Any] | None:
        from distcb.core.coordinator import Phase

        with self._cond:
            if not self._events:
                return {"kind": "end"} if self._ended else None
            epoch, logs = self._events[0]
            moved_on = self._barrier_epoch > epoch or self._ended
        if coordinator.epoch <= epoch and coordinator.phase is Phase.TRAINING:
            return None  # epoch `epoch`'s decisions are not recorded yet
        at = EffectPoint.epoch_end(epoch)
        self._decisions_seen = min(self._decisions_seen, len(coordinator.decisions))
        expected = {
            d.filepath
            for d in coordinator.decisions[self._decisions_seen :]
            if isinstance(d, SaveModel) and d.at == at
        }
        new_saved = coordinator.saved[self._saved_seen :]
        arrived = {s.filepath for s in new_saved}
        if not expected <= arrived and not moved_on:
            return None  # the chief is still saving (its Saved precedes its next epoch end)
        self._decisions_seen = len(coordinator.decisions)
        self._saved_seen += len(new_saved)
        with self._cond:
            self._events.popleft()
        saved = list(dict.fromkeys(s.filepath for s in new_saved if s.error is None))
        return {"kind": "epoch", "epoch": epoch, "logs": encode_logs(logs), "saved": saved}


# --------------------------------------------------------------------------- trial side


def run(
    train_fn: Callable[..., Any],
    *,
    num_workers: int,
    callbacks: Sequence[Any] = (),
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    config: Config | None = None,
    stateful_metrics: Sequence[str] = (),
    **ray_options: Any,
) -> History:
    """Inside a Tune function trainable: run a distcb job on Ray and report it to Tune.

    Takes `distcb.run`'s arguments and the Ray backend's options
    (``num_cpus_per_worker``, ``num_gpus_per_worker``, ``run_dir``, ``env``, ...).
    Returns the aggregated History once training ended normally.

    Raises:
        SystemExit: Tune stopped the trial (re-raised after the job was stopped).
        WorkerLostError: a worker failed (the trial errors; Tune may retry it).
    """
    from ray import tune

    config = config or Config()
    env = dict(ray_options.pop("env", None) or {})
    restore_dir: str | None = None
    epoch_offset = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        restore_dir = checkpoint.to_directory(tempfile.mkdtemp(prefix="distcb-restore-"))
        epoch_offset = RestoredCheckpoint.load(restore_dir).epoch + 1
        env[ENV_CHECKPOINT] = restore_dir
    try:
        history, stop = asyncio.run(
            _run_trial(
                train_fn,
                num_workers=num_workers,
                callbacks=list(callbacks),
                args=tuple(args),
                kwargs=dict(kwargs or {}),
                config=config,
                stateful_metrics=tuple(stateful_metrics),
                env=env,
                epoch_offset=epoch_offset,
                ray_options=ray_options,
            )
        )
    finally:
        if restore_dir is not None:
            shutil.rmtree(restore_dir, ignore_errors=True)
    if stop is not None:
        raise stop
    assert history is not None
    return history


async def _run_trial(
    train_fn: Callable[..., Any],
    *,
    num_workers: int,
    callbacks: list[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    config: Config,
    stateful_metrics: tuple[str, ...],
    env: dict[str, str],
    epoch_offset: int,
    ray_options: dict[str, Any],
) -> tuple[History | None, SystemExit | None]:
    from distcb.launch.ray_backend import RayJob

    async with RayJob(
        train_fn,
        num_workers=num_workers,
        callbacks=callbacks,
        args=args,
        kwargs=kwargs,
        config=config,
        stateful_metrics=stateful_metrics,
        env=env,
        observer=TuneObserver(),
        **ray_options,
    ) as job:
        waiter = asyncio.ensure_future(job.wait())
        reporter = asyncio.ensure_future(_report_epochs(job, config, epoch_offset))
        try:
            await asyncio.wait({waiter, reporter}, return_when=asyncio.FIRST_COMPLETED)
            error = waiter.exception() if waiter.done() else None
            if error is not None:
                raise error
            stop = await reporter  # after a normal end it reports the epochs left, then ends
            if stop is not None:
                # The coordinator stops the workers at the end of the epoch in flight.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(waiter), config.stop_timeout_s)
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
        metrics = decode_logs(event["logs"])
        metrics["epoch"] = epoch_offset + epoch
        staged = _stage_checkpoint(event["saved"], metrics) if event["saved"] else None
        try:
            stop = await asyncio.to_thread(_report, metrics, staged)
        finally:
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
        await _observe(job, config, "verdict", epoch, stop is not None)
        if stop is not None:
            return stop


async def _observe(job: Any, config: Config, method: str, *args: Any) -> Any:
    from ray.exceptions import RayError

    try:
        return await asyncio.wait_for(
            job.coordinator.observe.remote(method, *args), config.heartbeat_timeout_s
        )
    except TimeoutError:
        raise CoordinatorLostError(
            f"the coordinator actor did not answer {method} within "
            f"Config.heartbeat_timeout_s={config.heartbeat_timeout_s:g} s"
        ) from None
    except RayError as exc:
        raise CoordinatorLostError(f"the coordinator actor failed: {type(exc).__name__}") from None


def _report(metrics: dict[str, Any], checkpoint_dir: str | None) -> SystemExit | None:
    """``tune.report`` on a thread of the trial process; Tune's stop comes back as a value."""
    from ray import tune

    checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    try:
        tune.report(metrics, checkpoint=checkpoint)
    except SystemExit as exc:
        return exc
    return None


def _stage_checkpoint(paths: Sequence[str], metrics: dict[str, Any]) -> str | None:
    """A directory holding the saved files and their description, for ``tune.report``."""
    present = [p for p in paths if os.path.isfile(p)]
    if not present:
        return None
    directory = tempfile.mkdtemp(prefix="distcb-tune-checkpoint-")
    names: list[str] = []
    for index, path in enumerate(present):
        name = os.path.basename(path)
        if name in names or name == CHECKPOINT_INFO:
            name = f"{index}-{name}"
        try:
            os.link(path, os.path.join(directory, name))
        except OSError:
            shutil.copy2(path, os.path.join(directory, name))
        names.append(name)
    info = {"epoch": metrics["epoch"], "files": names, "metrics": encode_logs(metrics)}
    with open(os.path.join(directory, CHECKPOINT_INFO), "w") as handle:
        json.dump(info, handle)
    return directory
