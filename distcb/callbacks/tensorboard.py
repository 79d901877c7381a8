"""TensorBoard: the job's aggregated logs as TensorBoard event files, in Keras's layout.

Only the coordinator writes (one writer per run directory, tensorboardX):

- ``log_dir/train``: ``epoch_<metric>`` at step = epoch (0-based),
  ``epoch_learning_rate`` (from ``logs["learning_rate"]``, else from the
  learning rate the model proxy knows), ``batch_<metric>`` at the global step
  (1-based) when ``update_freq`` is ``"batch"`` or an integer N (every N-th
  step), and weight histograms ``<weight path>/histogram`` every
  ``histogram_freq`` epochs.
- ``log_dir/validation``: ``val_<metric>`` as ``epoch_<metric>``.
- Where the workers disagree, with more than one worker:
  ``spread/epoch_<metric>_min`` and ``_max`` (and ``spread/batch_...`` when
  batches are logged) in the run of the metric. They never enter the logs.

Where the data comes from: the model lives on the workers, so weight
histograms come from the chief, which puts
``distcb.protocol.histograms.weight_histograms(...)`` in ``extras["histograms"]`` of its
epoch-end message whenever ``epoch % histogram_freq == 0`` (the coordinator
reads ``histogram_freq`` to tell it). ``write_graph``: tensorboardX cannot trace
a Keras graph without the model, so the sink writes the model's *conceptual*
graph, Keras's ``keras`` summary for TensorBoard's graph plugin, from the JSON
the chief sends as ``extras["model_json"]`` (``model.to_json()``), or from
``model.to_json()`` when a real Keras model was set; with neither, nothing.
Op graphs, weight images, profiling and embeddings need the model and are
not written (a warning says so at construction).

``write_steps_per_second`` measures the coordinator's pace: merged steps per
second of wall time between batch ends, and steps per epoch over the epoch's
duration.

Hooks only convert values to floats and queue the writes; with a runtime the
files are written by a private writer thread, so an epoch barrier never waits
on the disk. Without a runtime the writes happen in the hook.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from distcb.callbacks.base import Callback, Logs
from distcb.protocol.histograms import decode_weight_histograms, weight_histograms

logger = logging.getLogger(__name__)

TRAIN_RUN = "train"
VALIDATION_RUN = "validation"


def _as_float(value: Any) -> float | None:
    """A log value as a scalar, or None when it is not one (strings, lists)."""
    if isinstance(value, bool | str) or value is None:
        return None
    try:
        array = np.asarray(value)
    except Exception:
        return None
    if array.ndim != 0 or array.dtype.kind not in "biuf":
        return None
    return float(array)


def _parse_update_freq(update_freq: Any) -> int | None:
    if update_freq == "epoch":
        return None
    if update_freq == "batch":
        return 1
    if isinstance(update_freq, int) and not isinstance(update_freq, bool) and update_freq >= 1:
        return update_freq
    raise ValueError(
        f'update_freq must be "epoch", "batch" or an integer >= 1, received {update_freq!r}.'
    )


class TensorBoard(Callback):
    """Write the job's logs for TensorBoard (``keras.callbacks.TensorBoard``), coordinator only.

    The positional arguments are Keras 3's. Keras 2's ``batch_size``,
    ``write_grads``, ``embeddings_layer_names`` and ``embeddings_data`` are
    accepted as keywords and ignored with a warning.

    Args:
        log_dir: the directory that receives ``train/`` and ``validation/``.
        histogram_freq: write weight histograms every this many epochs (0: never).
        write_graph: write the model's conceptual graph when its JSON is known.
        write_images: not supported on the coordinator (warning).
        write_steps_per_second: also write the coordinator's steps per second.
        update_freq: ``"epoch"``, ``"batch"`` or N: write ``batch_`` scalars every N steps.
        profile_batch: not supported on the coordinator (warning when set).
        embeddings_freq: not supported on the coordinator (warning when set).
        embeddings_metadata: accepted for compatibility.
    """

    decides_on_batch = False
    observes_only = True  # runs after the workers are released (DESIGN principle 3)

    def __init__(
        self,
        log_dir: str | os.PathLike[str] = "logs",
        histogram_freq: int = 0,
        write_graph: bool = True,
        write_images: bool = False,
        write_steps_per_second: bool = False,
        update_freq: str | int = "epoch",
        profile_batch: Any = 0,
        embeddings_freq: int = 0,
        embeddings_metadata: Any = None,
        *,
        batch_size: Any = None,
        write_grads: Any = None,
        embeddings_layer_names: Any = None,
        embeddings_data: Any = None,
    ):
        super().__init__()
        if isinstance(histogram_freq, bool) or not isinstance(histogram_freq, int):
            raise ValueError(
                f"histogram_freq must be an integer >= 0, received {histogram_freq!r}."
            )
        if histogram_freq < 0:
            raise ValueError(
                f"histogram_freq must be an integer >= 0, received {histogram_freq!r}."
            )
        self.log_dir = os.fspath(log_dir)
        self.histogram_freq = histogram_freq
        self.write_graph = write_graph
        self.write_images = write_images
        self.write_steps_per_second = write_steps_per_second
        self._every = _parse_update_freq(update_freq)
        self.update_freq: str | int = "epoch" if self._every is None else self._every
        self.profile_batch = profile_batch
        self.embeddings_freq = embeddings_freq
        self.embeddings_metadata = embeddings_metadata
        self._warn_unsupported(
            write_images=write_images,
            profile_batch=profile_batch,
            embeddings_freq=embeddings_freq,
            keras2={
                "batch_size": batch_size,
                "write_grads": write_grads,
                "embeddings_layer_names": embeddings_layer_names,
                "embeddings_data": embeddings_data,
            },
        )
        self._runtime: Any = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed: concurrent.futures.Future[None] | None = None
        self._writers: dict[str, Any] = {}  # run -> SummaryWriter, touched by the writer only
        self._write_failed = False
        self._global_step = 0
        self._in_batch = False
        self._graph_written = False
        self._epoch_start_s = 0.0
        self._epoch_start_step = 0
        self._last_batch_end_s = 0.0

    @staticmethod
    def _warn_unsupported(
        *, write_images: bool, profile_batch: Any, embeddings_freq: int, keras2: dict[str, Any]
    ) -> None:
        unsupported = []
        if write_images:
            unsupported.append("write_images=True (weight images)")
        if profile_batch not in (0, None, "", (0, 0), [0, 0], "0,0"):
            unsupported.append(f"profile_batch={profile_batch!r} (profiling)")
        if embeddings_freq:
            unsupported.append(f"embeddings_freq={embeddings_freq!r} (embeddings)")
        if unsupported:
            warnings.warn(
                "distcb TensorBoard runs on the coordinator, which has no model: "
                f"{', '.join(unsupported)} is not written. Profile on a worker instead.",
                stacklevel=3,
            )
        given = [name for name, value in keras2.items() if value not in (None, False)]
        if given:
            warnings.warn(
                f"TensorBoard arguments {given} are Keras 2 arguments with no effect in Keras 3 "
                "and distcb; they are ignored. Remove them to silence this warning.",
                stacklevel=3,
            )

    def set_runtime(self, runtime: Any) -> None:
        """Receive the coordinator's runtime: files are then written off the callback thread."""
        self._runtime = runtime

    # ------------------------------------------------------------------ hooks (callback thread)

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self._global_step = 0
        self._in_batch = False
        self._graph_written = False
        self._closed = None
        self._write_failed = False
        self._last_batch_end_s = self._epoch_start_s = time.monotonic()
        if self._runtime is not None and self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="distcb-tensorboard"
            )
        to_json = getattr(self.model, "to_json", None)
        if self.write_graph and callable(to_json):
            try:
                model_json = to_json()
            except Exception as exc:  # like Keras: a model that cannot serialize is skipped
                logger.warning("TensorBoard: the model failed to serialize as JSON (%s).", exc)
            else:
                self._graph_written = True
                self._run(self._write_graph, model_json)

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self._epoch_start_s = time.monotonic()
        self._epoch_start_step = self._steps_done()

    def on_train_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        self._global_step += 1
        self._in_batch = True

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        if not self._in_batch:  # a caller that runs only batch-end hooks still counts steps
            self._global_step += 1
        self._in_batch = False
        now = time.monotonic()
        elapsed, self._last_batch_end_s = now - self._last_batch_end_s, now
        step = self._global_step
        if self._every is None or step % self._every:
            return
        train: dict[str, float] = {}
        for name, value in (logs or {}).items():
            number = _as_float(value)
            if number is not None:
                train[f"batch_{name}"] = number
        if self.write_steps_per_second and elapsed > 0:
            train["batch_steps_per_second"] = 1.0 / elapsed
        runs = {TRAIN_RUN: train}
        self._add_spread(runs, "batch", getattr(self._state, "batch_spread", None))
        self._run(self._write_scalars, step, runs)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        train: dict[str, float] = {}
        val: dict[str, float] = {}
        for name, value in (logs or {}).items():
            number = _as_float(value)
            if number is None:
                continue
            if name.startswith("val_"):
                val[f"epoch_{name[4:]}"] = number
            else:
                train[f"epoch_{name}"] = number
        if "epoch_learning_rate" not in train:
            learning_rate = self._model_learning_rate()
            if learning_rate is not None:
                train["epoch_learning_rate"] = learning_rate
        if self.write_steps_per_second:
            elapsed = time.monotonic() - self._epoch_start_s
            if elapsed > 0:
                steps = self._steps_done() - self._epoch_start_step
                train["epoch_steps_per_second"] = steps / elapsed
        runs = {TRAIN_RUN: train, VALIDATION_RUN: val}
        self._add_spread(runs, "epoch", getattr(self._state, "epoch_spread", None))
        self._run(self._write_scalars, epoch, runs)
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._epoch_histograms(epoch)
        if self.write_graph and not self._graph_written:
            model_json = self._chief_extra("model_json")
            if isinstance(model_json, str):
                self._graph_written = True
                self._run(self._write_graph, model_json)
        self._run(self._flush)

    def on_train_end(self, logs: Logs | None = None) -> None:
        if self._executor is None:
            self._close_writers()
            return
        executor, self._executor = self._executor, None
        self._closed = executor.submit(self._close_writers)
        executor.shutdown(wait=False)

    async def aclose(self) -> None:
        """Wait until every event is written and the files are closed."""
        if self._closed is not None:
            await asyncio.wrap_future(self._closed)

    # ------------------------------------------------------------------ snapshots (callback thread)

    @property
    def _state(self) -> Any:
        return getattr(self._runtime, "state", None)

    @property
    def wants_batch_logs(self) -> bool:
        """Whether the batch hooks do anything (only with update_freq "batch" or N).

        A hint for the coordinator: with update_freq="epoch" this sink needs no batch logs.
        """
        return self._every is not None

    def implements_batch_hooks(self) -> bool:
        """Read by CallbackList: workers stream batch logs only when this writes them."""
        return self.wants_batch_logs

    @property
    def wants_model_json(self) -> bool:
        """Read by the coordinator: ask the chief for ``model.to_json()`` at epoch 0."""
        return bool(self.write_graph)

    def _steps_done(self) -> int:
        """Merged steps so far: the coordinator's count, else the batch hooks seen."""
        step = getattr(self._state, "global_step", None)
        return step if isinstance(step, int) else self._global_step

    def _add_spread(self, runs: dict[str, dict[str, float]], prefix: str, spread: Any) -> None:
        if not spread or getattr(self._state, "num_workers", 0) < 2:
            return
        for name, value in spread.items():
            run, metric = (
                (VALIDATION_RUN, name[4:]) if name.startswith("val_") else (TRAIN_RUN, name)
            )
            tags = runs.setdefault(run, {})
            tags[f"spread/{prefix}_{metric}_min"] = float(value.min)
            tags[f"spread/{prefix}_{metric}_max"] = float(value.max)

    def _chief_extra(self, key: str) -> Any:
        extras = getattr(self._state, "epoch_extras", None) or {}
        for rank in sorted(extras):
            if isinstance(extras[rank], Mapping) and key in extras[rank]:
                return extras[rank][key]
        return None

    def _epoch_histograms(self, epoch: int) -> None:
        payload = self._chief_extra("histograms")
        if payload is None and self._runtime is None:
            payload = self._model_histograms()
        if payload is not None:
            self._run(self._write_histograms, epoch, payload)

    def _model_histograms(self) -> dict[str, Any] | None:
        """Histograms of a real Keras model's weights, when one was set (no coordinator)."""
        try:
            layers = list(self.model.layers)
        except (AttributeError, TypeError):
            return None
        named = {}
        for layer in layers:
            for weight in getattr(layer, "weights", ()):
                name = getattr(weight, "path", None) or weight.name
                named[name] = np.asarray(weight)
        return weight_histograms(named)

    def _model_learning_rate(self) -> float | None:
        optimizer = getattr(self.model, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        learning_rate = getattr(optimizer, "learning_rate", None)
        if learning_rate is None:
            return None
        try:
            value = float(np.asarray(learning_rate))
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    def _run(self, fn: Callable[..., None], *args: Any) -> None:
        if self._executor is None:
            fn(*args)
        else:
            self._executor.submit(self._guarded, fn, *args)

    # ------------------------------------------------------------------ writer side

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # the writer thread must survive a bad payload or a full disk
            if not self._write_failed:
                self._write_failed = True
                logger.warning(
                    "TensorBoard could not write to %s (%s: %s); later failures are not reported.",
                    self.log_dir,
                    type(exc).__name__,
                    exc,
                )

    def _writer(self, run: str) -> Any:
        writer = self._writers.get(run)
        if writer is None:
            from tensorboardX import SummaryWriter

            writer = SummaryWriter(logdir=os.path.join(self.log_dir, run))
            self._writers[run] = writer
        return writer

    def _write_scalars(self, step: int, runs: dict[str, dict[str, float]]) -> None:
        for run, tags in runs.items():
            if tags:
                writer = self._writer(run)
                for tag, value in tags.items():
                    writer.add_scalar(tag, value, global_step=step)

    def _write_histograms(self, epoch: int, payload: Any) -> None:
        writer = self._writer(TRAIN_RUN)
        for histogram in decode_weight_histograms(payload):
            if not histogram.bucket_counts:
                continue  # no finite value: nothing TensorBoard can draw
            writer.add_histogram_raw(
                histogram.tag,
                min=histogram.min,
                max=histogram.max,
                num=histogram.num,
                sum=histogram.sum,
                sum_squares=histogram.sum_squares,
                bucket_limits=list(histogram.bucket_limits),
                bucket_counts=list(histogram.bucket_counts),
                global_step=epoch,
            )

    def _write_graph(self, model_json: str) -> None:
        from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboardX.proto.tensor_pb2 import TensorProto

        # What keras_model_summary writes: TensorBoard's graph plugin draws it.
        metadata = SummaryMetadata()
        metadata.plugin_data.plugin_name = "graph_keras_model"
        metadata.plugin_data.content = b"1"
        tensor = TensorProto(dtype="DT_STRING", string_val=[model_json.encode()])
        summary = Summary(value=[Summary.Value(tag="keras", metadata=metadata, tensor=tensor)])
        self._writer(TRAIN_RUN)._get_file_writer().add_summary(summary, global_step=0)

    def _flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def _close_writers(self) -> None:
        writers, self._writers = self._writers, {}
        for writer in writers.values():
            writer.close()
