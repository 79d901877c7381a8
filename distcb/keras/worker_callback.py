"""`WorkerCallback`: the one callback each worker adds to `model.fit`.

It joins the coordinator, streams batch logs without blocking, sends the
epoch logs and waits at the epoch barrier, and applies every decision the
coordinator sends at its effect point: stop, set the learning rate,
snapshot/restore weights, save (chief only, atomically). Works with Keras 3
and with tf_keras (the Keras 2 API, required for MultiWorkerMirroredStrategy).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
from typing import Any

from distcb.core.config import Config
from distcb.core.decisions import (
    Decision,
    ReleaseWeights,
    RestoreWeights,
    SaveModel,
    SetLearningRate,
    SnapshotWeights,
    StopTraining,
)
from distcb.core.errors import DecisionError
from distcb.core.messages import Done, EpochEnd, Join, Saved
from distcb.keras import flavours
from distcb.keras.chief import ChiefTensorBoardWork
from distcb.keras.link import Connector, WorkerLink
from distcb.launch.context import WorkerContext, worker_context


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
    ):
        super().__init__()
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
        self._link: WorkerLink | None = None
        self._chief: ChiefTensorBoardWork | None = None  # the chief's TensorBoard work
        self._snapshots: dict[int, list[Any]] = {}
        self._epoch = 0
        self._first_epoch: int | None = None
        self.applied: list[tuple[int, int, Decision]] = []  # (epoch, step, decision)
        self.saved_paths: list[str] = []
        self.link_statistics: dict[str, float] = {}
        self.job_error: str | None = None

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

    # ------------------------------------------------------------------ hooks

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        connect = self._connect or _websocket_connector(self.context)
        self._link = WorkerLink(
            rank=self.context.rank,
            world_size=self.context.world_size,
            connect=connect,
            config=self.context.config,
        )
        params = dict(self.params or {})
        join_params = {
            "epochs": params.get("epochs"),
            "initial_epoch": self.initial_epoch,
            "steps": params.get("steps"),
            "verbose": params.get("verbose", 0),
            "samples": self.samples,
            "val_samples": self.val_samples,
            "batch_size": self.batch_size,
            "metrics": flavours.metric_names(self.model),
            "directions": flavours.metric_directions(self.model),
            "learning_rate": flavours.get_learning_rate(self.model),
            "flavour": flavours.flavour_of(self),
        }
        start = self._link.start(Join(self.context.rank, self.context.world_size, join_params))
        if self.is_chief:
            self._chief = ChiefTensorBoardWork(
                self.model, start, max_profile_bytes=self.context.config.max_message_bytes // 2
            )

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._first_epoch is None:
            self._first_epoch = epoch
        self._epoch = epoch
        self._apply(self._require_link().begin_epoch(epoch), -1)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._chief is not None:
            self._chief.batch_begin(batch)
        decisions = self._require_link().begin_batch(batch)
        if decisions:
            self._apply(decisions, batch)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        link = self._link
        if link is None or not link.want_batch_logs:
            return
        samples = None
        if self.batch_size is not None:
            samples = float((batch + 1) * self.batch_size)
            if self.samples is not None:
                samples = min(samples, float(self.samples))
        link.end_batch(batch, dict(logs or {}), samples)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        link = self._require_link()
        extras = {} if self._chief is None else self._chief.epoch_extras(epoch)
        message = EpochEnd(
            self.context.rank,
            epoch,
            flavours.to_floats(logs or {}),
            samples=None if self.samples is None else float(self.samples),
            val_samples=None if self.val_samples is None else float(self.val_samples),
            extras=extras,
        )
        self._apply(link.end_epoch(message), -1)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        link = self._require_link()
        self.link_statistics = link.statistics()
        try:
            decisions, self.job_error = link.end_training()
            self._apply(decisions, -1)
            sent = link.send(Done(self.context.rank, self.report()))
            if sent is not None:  # the report must be out before the connection closes
                with contextlib.suppress(Exception):
                    sent.result(timeout=self.context.config.reply_timeout_s)
        finally:
            link.close()
            self._link = None
            if self._chief is not None:
                self._chief.close()
                self._chief = None

    # ------------------------------------------------------------------ decisions

    def _require_link(self) -> WorkerLink:
        if self._link is None:
            raise RuntimeError("WorkerCallback hooks ran before on_train_begin")
        return self._link

    def _apply(self, decisions: list[Decision], step: int) -> None:
        for decision in decisions:
            self.applied.append((self._epoch, step, decision))
            if isinstance(decision, StopTraining):
                self.model.stop_training = True
            elif isinstance(decision, SetLearningRate):
                flavours.set_learning_rate(self.model, decision.learning_rate)
            elif isinstance(decision, SnapshotWeights):
                self._snapshots[decision.snapshot_id] = [w.copy() for w in self.model.get_weights()]
            elif isinstance(decision, RestoreWeights):
                weights = self._snapshots.get(decision.snapshot_id)
                if weights is None:
                    raise DecisionError(
                        f"rank {self.context.rank}: no weights snapshot {decision.snapshot_id}"
                    )
                self.model.set_weights(weights)
            elif isinstance(decision, ReleaseWeights):
                self._snapshots.pop(decision.snapshot_id, None)
            elif isinstance(decision, SaveModel) and self.is_chief:
                self._save(decision)

    def _save(self, decision: SaveModel) -> None:
        path = decision.filepath
        error = None
        try:
            if not decision.overwrite and os.path.exists(path):
                return
            directory = os.path.dirname(path) or "."
            os.makedirs(directory, exist_ok=True)
            suffix = ".weights.h5" if path.endswith(".weights.h5") else os.path.splitext(path)[1]
            fd, tmp = tempfile.mkstemp(prefix=".distcb-", suffix=suffix, dir=directory)
            os.close(fd)
            os.unlink(
                tmp
            )  # Keras refuses to overwrite some formats silently; let it create the file
            try:
                if decision.weights_only:
                    self.model.save_weights(tmp)
                else:
                    self.model.save(tmp)
                os.replace(tmp, path)
                self.saved_paths.append(path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except (
            Exception
        ) as exc:  # reported to the coordinator; training goes on, as in Keras's warning path
            error = f"{type(exc).__name__}: {exc}"
            print(
                f"distcb rank {self.context.rank}: could not save {path}: {error}", file=sys.stderr
            )
        if self._link is not None:
            self._link.send(Saved(self.context.rank, path, error))

    def report(self) -> dict[str, Any]:
        """What this worker ends with: its learning rate and a digest of its weights."""
        digest = hashlib.sha256()
        for weight in self.model.get_weights():
            digest.update(weight.tobytes())
        return {
            "learning_rate": flavours.get_learning_rate(self.model),
            "weights_sha256": digest.hexdigest(),
            "epochs_run": self._epoch + 1,
            "applied": [[e, s, d.to_dict()] for e, s, d in self.applied],
            "saved": list(self.saved_paths),
            "link": dict(self.link_statistics),
        }


# Address scheme -> "module:function" opening a connection as (address, token, *, config);
# any other address ("host:port", "ws://...") goes to the websocket client.
CONNECTORS = {"ray": "distcb.transport.ray:connect"}


def _websocket_connector(context: WorkerContext) -> Connector:
    async def connect() -> Any:
        import importlib

        address = context.address or ""
        target = CONNECTORS.get(address.partition(":")[0], "distcb.transport.websocket:connect")
        module_name, function_name = target.split(":")
        open_connection = getattr(importlib.import_module(module_name), function_name)
        return await open_connection(address, context.token or "", config=context.config)

    return connect
