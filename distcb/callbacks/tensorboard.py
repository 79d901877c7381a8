"""TensorBoard: the logs as TensorBoard event files, in Keras's layout, in plain fit or a job.

One writer per run directory (tensorboardX), in Keras's layout:

- ``log_dir/train``: ``epoch_<metric>`` at step = epoch (0-based),
  ``epoch_learning_rate`` (from ``logs["learning_rate"]``, else from the
  optimizer's learning rate; ``epoch_learning_rate_<name>`` per optimizer of a
  Keras 3 ``MultiOptimizer``), ``batch_<metric>`` at the global step (1-based)
  when ``update_freq`` is ``"batch"`` or an integer N (every N-th step), weight
  histograms ``<weight path>/histogram`` and, with ``write_images``, weight
  images ``<weight path>/image`` every ``histogram_freq`` epochs; the traced
  graph ``batch_<stop>`` and the profiler's ``plugins/profile/`` files with
  ``profile_batch``.
- ``log_dir/validation``: ``val_<metric>`` as ``epoch_<metric>``, and
  ``evaluation_<metric>_vs_iterations`` at the optimizer's iteration count each
  time validation ran.
- ``log_dir/projector_config.pbtxt`` and ``train/keras_embedding.ckpt-<epoch>``
  with ``embeddings_freq``.
- Only in a distcb job, where the workers disagree (more than one worker):
  ``spread/epoch_<metric>_min`` and ``_max`` (and ``spread/batch_...`` when
  batches are logged) in the run of the metric. They never enter the logs.

**Plain fit.** Passed to a single-process Keras ``fit`` (Keras 3 or tf_keras),
the callback has the real model: it reads the weights, saves the embeddings,
profiles with TensorFlow's profiler, writes ``evaluation_*`` from
``on_test_end`` (also for ``model.evaluate``), and makes TensorFlow writers
default during training and evaluation so that summaries the model writes
itself land in ``train/`` and ``validation/`` (as Keras does; not with
``update_freq="epoch"``).

**On the coordinator.** The model lives on the workers, so the chief computes
what needs it and sends it in the extras of its epoch-end message; the callback
asks for it through ``worker_requests()`` (``distcb.protocol.worker_data``):
``histograms`` (``distcb.protocol.histograms``) and ``images``
(``distcb.protocol.weight_images``) every ``histogram_freq`` epochs, ``profile``
(``distcb.callbacks.tensorboard_profiling``: a profile ends with the epoch it
started in), ``embedding_layers`` (the chief saves the embeddings file itself,
under ``embeddings_dir``), and ``model_json`` for ``write_graph``
(TensorBoard's conceptual graph of the model). ``evaluation_*`` comes from each
epoch's ``val_`` logs at the chief's ``optimizer.iterations`` (sent as
``iterations``; else the job's merged step count). Summaries the model itself
writes stay on the workers.

``write_steps_per_second`` measures the pace of the steps this callback sees:
steps per second of wall time between batch ends, and steps per epoch over
the epoch's duration.

Hooks only convert values to floats and queue the writes; with a runtime (on
the coordinator) the files are written by a private writer thread, so an epoch
barrier never waits on the disk. Without a runtime the writes happen in the hook.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from distcb.callbacks import tensorboard_projector as projector
from distcb.callbacks.base import Callback, Logs
from distcb.callbacks.extension import JobView, Runtime, SpreadView
from distcb.callbacks.learning_rates import log_name, optimizers_of
from distcb.callbacks.tensorboard_local import ModelSummaryWriters
from distcb.callbacks.tensorboard_profiling import BatchProfiler, parse_profile_batch
from distcb.callbacks.tensorboard_runs import TRAIN_RUN, VALIDATION_RUN, RunWriters
from distcb.protocol.histograms import weight_histograms
from distcb.protocol.weight_images import weight_images
from distcb.protocol.worker_data import (
    NO_EXTRAS,
    AnyWorkerRequest,
    EmbeddingsRequest,
    EpochExtras,
    HistogramRequest,
    ModelJsonRequest,
    ProfileRequest,
)

logger = logging.getLogger(__name__)


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


def _frequency(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, received {value!r}.")
    return value


def _named_weights(model: Any) -> dict[str, Any]:
    """The weights of the model's layers by path (Keras 3) or name (tf_keras), as Keras names
    them in TensorBoard."""
    named = {}
    for layer in model.layers:
        for weight in getattr(layer, "weights", ()):
            name = getattr(weight, "path", None) or weight.name
            named[name] = np.asarray(weight)
    return named


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
    """Write the logs for TensorBoard (``keras.callbacks.TensorBoard``): in a plain ``fit``, or
    once per job on distcb's coordinator.

    The positional arguments are Keras 3's. Keras 2's ``batch_size``,
    ``write_grads``, ``embeddings_layer_names`` and ``embeddings_data`` are
    accepted as keywords and ignored with a warning.

    Args:
        log_dir: the directory that receives ``train/`` and ``validation/``.
        histogram_freq: write weight histograms every this many epochs (0: never).
        write_graph: write the model's conceptual graph.
        write_images: also draw the weights as images when histograms are written.
        write_steps_per_second: also write the steps per second.
        update_freq: ``"epoch"``, ``"batch"`` or N: write ``batch_`` scalars every N steps.
        profile_batch: profile this global batch (N), or the batches ``(start, stop)``
            or ``"start,stop"`` (1-based); 0: no profiling.
        embeddings_freq: save the embeddings for the projector every this many epochs.
        embeddings_metadata: a metadata file for every embedding layer, or layer
            name -> metadata file.

    Raises:
        ValueError: a negative frequency, a bad `update_freq` or `profile_batch`.
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
        embeddings_metadata: str | Mapping[str, str] | None = None,
        *,
        batch_size: Any = None,
        write_grads: Any = None,
        embeddings_layer_names: Any = None,
        embeddings_data: Any = None,
    ):
        super().__init__()
        self.log_dir = os.fspath(log_dir)
        self.histogram_freq = _frequency(histogram_freq, "histogram_freq")
        self.write_graph = write_graph
        self.write_images = bool(write_images)
        self.write_steps_per_second = write_steps_per_second
        self._every = _parse_update_freq(update_freq)
        self.update_freq: str | int = "epoch" if self._every is None else self._every
        self.profile_batch = profile_batch
        self.profile_batches = parse_profile_batch(profile_batch)
        self.embeddings_freq = _frequency(embeddings_freq, "embeddings_freq")
        if embeddings_metadata is not None and not isinstance(embeddings_metadata, str | Mapping):
            raise TypeError(
                "embeddings_metadata must be a file name, or a mapping of Embedding layer "
                f"names to file names, received {embeddings_metadata!r}."
            )
        self.embeddings_metadata = embeddings_metadata
        self._warn_unused(
            keras2={
                "batch_size": batch_size,
                "write_grads": write_grads,
                "embeddings_layer_names": embeddings_layer_names,
                "embeddings_data": embeddings_data,
            },
        )
        self._runtime: Runtime | None = None
        self._runs = RunWriters(self.log_dir, embeddings_metadata)
        self._global_step = 0
        self._in_batch = False
        self._graph_written = False
        self._projector_written = False
        self._epoch_start_s = 0.0
        self._epoch_start_step = 0
        self._last_batch_end_s = 0.0
        # Plain fit only (the callback has the model): TensorFlow writers, the profiler.
        self._model_writers: ModelSummaryWriters | None = None
        self._profiler: BatchProfiler | None = None
        self._global_test_step = 0
        self._training = False  # between on_train_begin and on_train_end
        self._resume: dict[str, Any] | None = None  # set_state(): where a resumed job goes on
        self._last_epoch = -1

    def _warn_unused(self, *, keras2: dict[str, Any]) -> None:
        if self.write_images and not self.histogram_freq:
            warnings.warn(
                "TensorBoard write_images=True draws the weights when histograms are written: "
                "with histogram_freq=0 no image is written. Pass histogram_freq >= 1.",
                stacklevel=3,
            )
        given = [name for name, value in keras2.items() if value not in (None, False)]
        if given:
            warnings.warn(
                f"TensorBoard arguments {given} are Keras 2 arguments with no effect in Keras 3 "
                "and distcb; they are ignored. Remove them to silence this warning.",
                stacklevel=3,
            )

    def set_runtime(self, runtime: Runtime) -> None:
        """Receive the coordinator's runtime: files are then written off the callback thread."""
        self._runtime = runtime

    def worker_requests(self) -> tuple[AnyWorkerRequest, ...]:
        """What the chief must compute from its model for this callback (read by the
        coordinator): histograms (and images), the model JSON, a profile, embeddings."""
        requests: list[AnyWorkerRequest] = []
        if self.histogram_freq:
            requests.append(
                HistogramRequest(every_epochs=self.histogram_freq, images=self.write_images)
            )
        if self.write_graph:
            requests.append(ModelJsonRequest())
        first, last = self.profile_batches
        if first:
            requests.append(ProfileRequest(first_batch=first, last_batch=last))
        if self.embeddings_dir is not None:
            requests.append(
                EmbeddingsRequest(every_epochs=self.embeddings_freq, directory=self.embeddings_dir)
            )
        return tuple(requests)

    def get_state(self) -> dict[str, Any]:
        """Where the event files stand: the step count, the last epoch written, and every
        event file of the runs with its size (on disk: synced first)."""
        measured = self._runs.measured()
        return {
            "global_step": self._global_step,
            "epoch": self._last_epoch,
            "graph_written": self._graph_written,
            "files": {rel: measure["bytes"] for rel, measure in measured.items()},
            "digests": {rel: measure["sha256"] for rel, measure in measured.items()},
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Go on from `get_state()`: the next `on_train_begin` cuts every event file back to
        its size then and removes the ones written since, so that TensorBoard reads what an
        uninterrupted run's files hold, in every tag. (A state without files, from an older
        distcb, reopens the files with a purge step instead: of the batch steps when batches
        are logged, else of the epochs.)"""
        self._resume = dict(state)
        if "files" in state:
            self._runs.purge_step = None
            return
        batches = self._every is not None
        step = int(state["global_step"]) if batches else int(state["epoch"])
        self._runs.purge_step = step + 1

    def sync(self) -> None:
        """Block until every write queued so far is on disk, fsynced, and measure the event
        files (the journal calls this before `get_state`)."""
        self._runs.sync()

    def statistics(self) -> dict[str, Any]:
        """The log directory, the scalars written so far, the runs (event files) open, and
        whether a write failed."""
        return {
            "log_dir": self.log_dir,
            "scalars_written": self._runs.scalars_written,
            "runs": self._runs.runs_open,
            "write_failed": self._runs.write_failed,
        }

    @property
    def embeddings_dir(self) -> str | None:
        """Where the embeddings files go (``log_dir/train``, absolute), or None without them
        (the chief saves them there)."""
        if not self.embeddings_freq:
            return None
        return os.path.abspath(os.path.join(self.log_dir, TRAIN_RUN))

    # ------------------------------------------------------------------ hooks (callback thread)

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self._training = True
        resume, self._resume = self._resume, None
        self._runs.start(  # a resumed state's files are cut back to their sizes then
            threaded=self._runtime is not None,
            resume_files=None if resume is None else resume.get("files"),
            resume_digests=None if resume is None else resume.get("digests"),
        )
        self._global_step = 0 if resume is None else int(resume["global_step"])
        self._global_test_step = 0
        self._in_batch = False
        self._graph_written = False if resume is None else bool(resume["graph_written"])
        self._projector_written = False
        self._last_batch_end_s = self._epoch_start_s = time.monotonic()
        to_json = getattr(self.model, "to_json", None)
        if self.write_graph and callable(to_json) and not self._graph_written:
            try:
                model_json = to_json()
            except Exception as exc:  # like Keras: a model that cannot serialize is skipped
                logger.warning("TensorBoard: the model failed to serialize as JSON (%s).", exc)
            else:
                self._graph_written = True
                self._runs.write_graph(model_json)
        model = self._local_model
        if model is not None:
            self._begin_local(model)

    def _begin_local(self, model: Any) -> None:
        """Plain fit: the projector config, the profiler, the writers for the model's summaries."""
        if self.embeddings_freq:
            projector.write_config(
                self.log_dir, projector.embedding_layer_names(model), self.embeddings_metadata
            )
            self._projector_written = True
        self._model_writers = ModelSummaryWriters(self.log_dir, self._every)
        self._model_writers.push(TRAIN_RUN, self._global_step)
        start, stop = self.profile_batches
        if start:
            writers = self._model_writers
            self._profiler = BatchProfiler(
                start,
                stop,
                os.path.join(self.log_dir, TRAIN_RUN),
                lambda: writers.writer(TRAIN_RUN),
            )
            self._profiler.warm_up()

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self._epoch_start_s = time.monotonic()
        self._epoch_start_step = self._steps_done()

    def on_train_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        self._global_step += 1
        self._in_batch = True
        if self._model_writers is not None:
            self._model_writers.repush(TRAIN_RUN, self._global_step)
        if self._profiler is not None:
            self._profiler.batch_begin(self._global_step, batch)

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        if not self._in_batch:  # a caller that runs only batch-end hooks still counts steps
            self._global_step += 1
        self._in_batch = False
        if self._profiler is not None:
            self._profiler.batch_end(self._global_step)
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
        self._add_spread(runs, "batch")
        self._runs.write_scalars(step, runs)

    # Evaluation hooks: Keras calls them in a plain fit (validation) and model.evaluate.
    def on_test_begin(self, logs: Logs | None = None) -> None:
        if self._model_writers is not None:
            self._model_writers.push(VALIDATION_RUN, self._global_test_step)

    def on_test_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        self._global_test_step += 1
        if self._model_writers is not None:
            self._model_writers.repush(VALIDATION_RUN, self._global_test_step)

    def on_test_end(self, logs: Logs | None = None) -> None:
        iterations = getattr(getattr(self.model, "optimizer", None), "iterations", None)
        if iterations is not None:
            values = {
                f"evaluation_{name}_vs_iterations": number
                for name, number in ((n, _as_float(v)) for n, v in (logs or {}).items())
                if number is not None
            }
            step = int(np.asarray(iterations))
            self._runs.write_scalars(step, {VALIDATION_RUN: values})
            if not self._training:  # model.evaluate alone: nothing closes the files later
                self._runs.close_later()
        if self._model_writers is not None:
            self._model_writers.pop()

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        self._last_epoch = epoch
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
        for tag, learning_rate in self._model_learning_rates().items():
            train.setdefault(tag, learning_rate)
        if self.write_steps_per_second:
            elapsed = time.monotonic() - self._epoch_start_s
            if elapsed > 0:
                steps = self._steps_done() - self._epoch_start_step
                train["epoch_steps_per_second"] = steps / elapsed
        # No on_test_end on the coordinator: validation ran on the workers; its logs are the
        # val_ ones (taken before the spread tags join them).
        evaluation = {f"evaluation_{t[6:]}_vs_iterations": v for t, v in val.items()}
        runs = {TRAIN_RUN: train, VALIDATION_RUN: val}
        self._add_spread(runs, "epoch")
        self._runs.write_scalars(epoch, runs)
        model = self._local_model
        if model is None and evaluation:
            iterations = self._chief_extras().iterations
            if iterations is None:
                iterations = self._steps_done()
            self._runs.write_scalars(iterations, {VALIDATION_RUN: evaluation})
        if self.histogram_freq and epoch % self.histogram_freq == 0:
            self._epoch_weights(epoch, model)
        if self.embeddings_freq and epoch % self.embeddings_freq == 0 and model is not None:
            from distcb.callbacks import local_model

            model.save_weights(
                projector.checkpoint_path(
                    os.path.join(self.log_dir, TRAIN_RUN), epoch, local_model.is_keras3(model)
                )
            )
        self._chief_files()
        self._runs.flush()

    def on_train_end(self, logs: Logs | None = None) -> None:
        self._training = False
        if self._profiler is not None:
            self._profiler.finish()
            self._profiler = None
        if self._model_writers is not None:
            self._model_writers.close()
            self._model_writers = None
        self._runs.finish()

    async def aclose(self) -> None:
        """Wait until every event is written and the files are closed."""
        closed = self._runs.closed
        if closed is not None:
            await asyncio.wrap_future(closed)

    # ------------------------------------------------------------------ snapshots (callback thread)

    @property
    def _state(self) -> JobView | None:
        return None if self._runtime is None else self._runtime.state

    @property
    def _local_model(self) -> Any:
        """The real Keras model in a plain fit; None on the coordinator (its proxy) or without."""
        model = self.model
        if model is None or not hasattr(model, "layers") or not hasattr(model, "optimizer"):
            return None
        return model

    @property
    def wants_batch_logs(self) -> bool:
        """Whether the batch hooks write anything (only with update_freq "batch" or N).

        A hint for the coordinator: with update_freq="epoch" this sink needs no batch logs.
        """
        return self._every is not None

    def implements_batch_hooks(self) -> bool:
        """Read by CallbackList (and tf_keras's): batch hooks are needed to write batch logs,
        or, in a plain fit, to profile."""
        profiles_here = bool(self.profile_batches[0]) and self._local_model is not None
        return self.wants_batch_logs or profiles_here

    def _implements_test_batch_hooks(self) -> bool:
        """Read by tf_keras: the test batch hook only moves the model's summary writer."""
        return self._every is not None and self._local_model is not None

    def _steps_done(self) -> int:
        """Merged steps so far: the coordinator's count, else the batch hooks seen."""
        state = self._state
        return self._global_step if state is None else state.global_step

    def _add_spread(self, runs: dict[str, dict[str, float]], prefix: str) -> None:
        state = self._state
        if state is None or state.num_workers < 2:
            return  # the batch spread is computed when read: not read then
        spread: Mapping[str, SpreadView] = (
            state.batch_spread if prefix == "batch" else state.epoch_spread
        )
        for name, value in spread.items():
            run, metric = (
                (VALIDATION_RUN, name[4:]) if name.startswith("val_") else (TRAIN_RUN, name)
            )
            tags = runs.setdefault(run, {})
            tags[f"spread/{prefix}_{metric}_min"] = float(value.min)
            tags[f"spread/{prefix}_{metric}_max"] = float(value.max)

    def _chief_extras(self) -> EpochExtras:
        """What the chief (the first rank that sent any) sent with this epoch's end."""
        extras = {} if self._state is None else self._state.epoch_extras
        return next((extras[r] for r in sorted(extras) if extras[r] != NO_EXTRAS), NO_EXTRAS)

    def _epoch_weights(self, epoch: int, model: Any) -> None:
        """Histograms (and images) of the weights: the model's, else the chief's."""
        if model is not None:
            from distcb.callbacks import local_model

            named = _named_weights(model)
            self._runs.write_histograms(epoch, weight_histograms(named))
            if self.write_images:
                images = weight_images(named, channels_last=local_model.channels_last(model))
                self._runs.write_images(epoch, images)
            return
        extras = self._chief_extras()
        if extras.histograms:
            self._runs.write_histograms(epoch, extras.histograms)
        if extras.images:
            self._runs.write_images(epoch, extras.images)

    def _chief_files(self) -> None:
        """What the chief sent besides histograms: the traced profile, the embedding layers."""
        extras = self._chief_extras()
        if self.write_graph and not self._graph_written and extras.model_json is not None:
            self._graph_written = True
            self._runs.write_graph(extras.model_json)
        if extras.profile is not None:
            self._runs.write_profile(extras.profile)
        layers = extras.embedding_layers
        if self.embeddings_freq and not self._projector_written and layers is not None:
            self._projector_written = True
            self._runs.write_projector(list(layers))

    def _model_learning_rates(self) -> dict[str, float]:
        """``epoch_learning_rate`` (or one per optimizer of a MultiOptimizer) from the model."""
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            return {}
        out = {}
        for name, sub in optimizers_of(self.model):
            sub = getattr(sub, "inner_optimizer", sub)  # a LossScaleOptimizer's
            try:
                value = float(np.asarray(sub.learning_rate))
            except (AttributeError, TypeError, ValueError):
                continue
            if math.isfinite(value):
                out[f"epoch_{log_name(name)}"] = value
        return out
