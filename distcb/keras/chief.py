"""What the chief worker computes for the coordinator's callbacks, from the model it trains.

The coordinator's callbacks have no model; ``Start.worker_requests`` says what
they need (``distcb.protocol.worker_data``). The chief's :class:`ChiefWork`
computes it and puts it in the extras of its epoch-end message:

- ``iterations``, the optimizer's step count, every epoch (the step of
  TensorBoard's ``evaluation_<metric>_vs_iterations``);
- ``histograms`` (and ``images`` when a due request asks) at the epochs a
  ``HistogramRequest`` is due: ``distcb.protocol.histograms``,
  ``distcb.protocol.weight_images``;
- ``model_json`` at the first epoch (``ModelJsonRequest``);
- ``embedding_layers`` (for the projector config) at the first epoch, and at
  the epochs an ``EmbeddingsRequest`` is due the chief saves the weights to
  ``<directory>/keras_embedding.ckpt-<epoch>`` itself (model files are the
  chief's to write);
- ``profile`` once the batches of the (first) ``ProfileRequest`` are done: the chief profiles into a
  directory of its own from the training thread (``on_train_batch_begin``:
  the trace of batch ``stop`` ends when the next batch begins, or at the epoch
  end, which also ends a profile that would run past it) and sends the files
  (``distcb.keras.profiling``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from typing import Any

from distcb.callbacks import tensorboard_projector as projector
from distcb.callbacks.tensorboard_profiling import BatchProfiler
from distcb.keras import models as keras_models
from distcb.keras.profiling import pack_profile
from distcb.protocol.worker_data import (
    AnyWorkerRequest,
    EmbeddingsRequest,
    EpochExtras,
    HistogramRequest,
    ModelJsonRequest,
    Profile,
    ProfileRequest,
    WeightHistogram,
    WeightImage,
)

logger = logging.getLogger(__name__)


class ChiefWork:
    """The chief's share of the coordinator callbacks' work, driven by WorkerCallback's hooks.

    Args:
        model: the Keras model the chief trains.
        requests: what the coordinator's callbacks asked for (``Start.worker_requests``).
        max_profile_bytes: the most profile bytes to send in one message.
    """

    def __init__(
        self, model: Any, requests: tuple[AnyWorkerRequest, ...], *, max_profile_bytes: int
    ):
        self.model = model
        self.histograms = [r for r in requests if isinstance(r, HistogramRequest)]
        self.embeddings = [r for r in requests if isinstance(r, EmbeddingsRequest)]
        self.model_json = any(isinstance(r, ModelJsonRequest) for r in requests)
        # One profiler runs at a time: the first request wins.
        profile = next((r for r in requests if isinstance(r, ProfileRequest)), None)
        self.max_profile_bytes = max_profile_bytes
        self._global_batch = 0
        self._first_epoch: int | None = None
        self._profile_dir: str | None = None
        self._profiler: BatchProfiler | None = None
        self._trace_writer: Any = None
        if profile is not None:
            self._profile_dir = tempfile.mkdtemp(prefix="distcb-profile-")
            self._profiler = BatchProfiler(
                profile.first_batch,
                profile.last_batch,
                os.path.join(self._profile_dir, "train"),
                self._writer,
            )
            self._profiler.warm_up()

    def _writer(self) -> Any:
        if self._trace_writer is None:
            import tensorflow as tf

            assert self._profile_dir is not None
            self._trace_writer = tf.summary.create_file_writer(
                os.path.join(self._profile_dir, "train")
            )
        return self._trace_writer

    def batch_begin(self, batch: int) -> None:
        """From ``on_train_batch_begin`` (the training thread)."""
        self._global_batch += 1
        if self._profiler is not None:
            self._profiler.batch_begin(self._global_batch, batch)

    def epoch_extras(self, epoch: int) -> EpochExtras:
        """What goes in the extras of this epoch's end."""
        if self._first_epoch is None:
            self._first_epoch = epoch
        first = epoch == self._first_epoch
        histograms: tuple[WeightHistogram, ...] = ()
        images: tuple[WeightImage, ...] = ()
        due = [r for r in self.histograms if r.due(epoch)]
        if due:
            from distcb.protocol.histograms import weight_histograms

            named = keras_models.named_weights(self.model)
            histograms = weight_histograms(named)
            if any(r.images for r in due):
                from distcb.protocol.weight_images import weight_images

                channels_last = keras_models.channels_last(self.model)
                images = weight_images(named, channels_last=channels_last)
        model_json = None
        if self.model_json and first:
            # A subclassed model has no JSON config; there is nothing to draw then.
            with contextlib.suppress(Exception):
                model_json = self.model.to_json()
        layers = None
        if self.embeddings and first:
            layers = tuple(projector.embedding_layer_names(self.model))
        for directory in dict.fromkeys(r.directory for r in self.embeddings if r.due(epoch)):
            self._save_embeddings(directory, epoch)
        return EpochExtras(
            iterations=keras_models.iterations(self.model),  # evaluation_*_vs_iterations' step
            histograms=histograms,
            images=images,
            model_json=model_json,
            embedding_layers=layers,
            profile=self._finished_profile(),
        )

    def _save_embeddings(self, folder: str, epoch: int) -> None:
        keras3 = keras_models.is_keras3(self.model)
        path = projector.checkpoint_path(folder, epoch, keras3)
        os.makedirs(folder, exist_ok=True)
        if not keras3:  # a TensorFlow checkpoint is several files: written in place
            self.model.save_weights(path)
            return
        fd, tmp = tempfile.mkstemp(prefix=".distcb-", suffix=".weights.h5", dir=folder)
        os.close(fd)
        os.unlink(tmp)
        try:
            with keras_models.writing_alone(self.model):  # the chief alone: see there
                self.model.save_weights(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _finished_profile(self) -> Profile | None:
        profiler = self._profiler
        if profiler is None or not (profiler.tracing or profiler.done):
            return None
        profiler.finish()  # a profile ends with the epoch it started in
        self._profiler = None
        self._close_writer()
        assert self._profile_dir is not None
        profile = pack_profile(
            os.path.join(self._profile_dir, "train"), max_bytes=self.max_profile_bytes
        )
        if profile.error is None:
            shutil.rmtree(self._profile_dir, ignore_errors=True)
            self._profile_dir = None
        return profile

    def _close_writer(self) -> None:
        if self._trace_writer is not None:
            self._trace_writer.close()
            self._trace_writer = None

    def close(self) -> None:
        """At the end of training: stop a profile that never reached an epoch end."""
        if self._profiler is not None and self._profiler.tracing:
            self._profiler.finish()
            logger.warning(
                "distcb: training ended before the profiled batches' epoch did; the profile "
                "was not sent and is left in %s",
                self._profile_dir,
            )
            self._profile_dir = None
        self._close_writer()
        if self._profile_dir is not None and self._profiler is not None:
            shutil.rmtree(self._profile_dir, ignore_errors=True)
