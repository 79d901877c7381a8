"""The TensorBoard callback's event files: one per run directory, written on a private
thread on the coordinator (so that an epoch barrier never waits on the disk) or in the
hook in a plain fit, and measured (size, SHA-256) for the journal."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from distcb.callbacks import tensorboard_projector as projector
from distcb.callbacks.tensorboard_events import EventDigests, EventFile, roll_back
from distcb.protocol.worker_data import Profile, WeightHistogram, WeightImage

__all__ = ["TRAIN_RUN", "VALIDATION_RUN", "RunWriters"]

logger = logging.getLogger("distcb.callbacks.tensorboard")
_WRITER_IDS = itertools.count()  # event file names unique within this process

TRAIN_RUN = "train"
VALIDATION_RUN = "validation"
RUNS = (TRAIN_RUN, VALIDATION_RUN)


class RunWriters:
    """The event files of ``log_dir/train`` and ``log_dir/validation``.

    Every ``write_*`` call is queued to the writer thread once `start` made one (the
    coordinator); without one it writes in the caller. A failed write is logged once and
    counted in `write_failed`; the writer goes on with the next.

    Args:
        log_dir: the directory of the runs.
        embeddings_metadata: the projector's metadata files (`write_projector`).
    """

    def __init__(self, log_dir: str, embeddings_metadata: str | Mapping[str, str] | None):
        self.log_dir = log_dir
        self.embeddings_metadata = embeddings_metadata
        self.purge_step: int | None = None  # the step new files purge from (an old state)
        self.write_failed = False
        self.scalars_written = 0  # counted by the writer
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed: concurrent.futures.Future[None] | None = None
        self._files: dict[str, EventFile] = {}  # run -> its file, touched by the writer only
        # The event files, their sizes and SHA-256 at the last sync (measured by the writer).
        self._measured: dict[str, dict[str, Any]] = {}
        self._digests = EventDigests()
        self._synced = False  # `_measured` is current: nothing queued since

    # ------------------------------------------------------------------ life (callback thread)

    def start(
        self,
        *,
        threaded: bool,
        resume_files: Mapping[str, int] | None = None,
        resume_digests: Mapping[str, str] | None = None,
    ) -> None:
        """A new attempt: wait for the last one's files to close, cut the files back to a
        resumed state's sizes (`resume_files`), and start the writer thread if `threaded`."""
        if self._closed is not None:  # an earlier attempt's files: closed before a roll-back
            with contextlib.suppress(Exception):  # its failure was reported by _guarded
                self._closed.result()
        self._closed = None
        if resume_files is not None:
            roll_back(self.log_dir, RUNS, resume_files, resume_digests)
        self._synced = False
        self.write_failed = False
        if threaded and self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="distcb-tensorboard"
            )

    def finish(self) -> None:
        """Close the files once every queued write is done (on the writer, without waiting)."""
        if self._executor is None:
            self.close_now()
            return
        executor, self._executor = self._executor, None
        self._closed = executor.submit(self.close_now)
        executor.shutdown(wait=False)

    @property
    def closed(self) -> concurrent.futures.Future[None] | None:
        """Done when the files `finish` closes are closed (None: nothing to wait for)."""
        return self._closed

    def close_now(self) -> None:
        """Close the files in this thread (the writer's, or a crash in a model test)."""
        files, self._files = self._files, {}
        for event_file in files.values():
            event_file.close()

    def sync(self) -> None:
        """Block until every write queued so far is on disk, fsynced, and measure the files."""
        executor = self._executor
        if executor is not None:
            with contextlib.suppress(RuntimeError):  # shut down: nothing is queued
                executor.submit(self._flush_and_measure).result()
        else:
            self._flush_and_measure()
        self._synced = True

    def measured(self) -> dict[str, dict[str, Any]]:
        """``run/name`` -> ``{"bytes", "sha256"}`` of every event file, on disk (synced first)."""
        if not self._synced:
            self.sync()
        return self._measured

    @property
    def runs_open(self) -> list[str]:
        return sorted(self._files.copy())  # the writer thread adds runs

    # ------------------------------------------------------------------ writes (queued)

    def write_scalars(self, step: int, runs: dict[str, dict[str, float]]) -> None:
        self._queue(self._scalars, step, runs)

    def write_histograms(self, epoch: int, histograms: tuple[WeightHistogram, ...]) -> None:
        self._queue(self._histograms, epoch, histograms)

    def write_images(self, epoch: int, images: tuple[WeightImage, ...]) -> None:
        self._queue(self._images, epoch, images)

    def write_profile(self, profile: Profile) -> None:
        self._queue(self._profile, profile)

    def write_projector(self, layers: list[str]) -> None:
        self._queue(self._projector, layers)

    def write_graph(self, model_json: str) -> None:
        self._queue(self._graph, model_json)

    def flush(self) -> None:
        self._queue(self._flush)

    def close_later(self) -> None:
        """Close the files after the writes queued so far (model.evaluate alone)."""
        self._queue(self.close_now)

    def _queue(self, fn: Callable[..., None], *args: Any) -> None:
        self._synced = False
        if self._executor is None:
            fn(*args)
        else:
            self._executor.submit(self._guarded, fn, *args)

    # ------------------------------------------------------------------ the writer's side

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # the writer thread must survive a bad payload or a full disk
            if not self.write_failed:
                self.write_failed = True
                logger.warning(
                    "TensorBoard could not write to %s (%s: %s); later failures are not reported.",
                    self.log_dir,
                    type(exc).__name__,
                    exc,
                )

    def _file(self, run: str) -> EventFile:
        event_file = self._files.get(run)
        if event_file is None:
            # An event file is named by the second and the host, and opened with "wb": a
            # file reopened for the same run within a second (evaluate() right after fit(),
            # a quick restart) would truncate what the last one wrote without the suffix.
            # Zero-padded: TensorBoard reads a run's files in name order.
            event_file = EventFile(
                os.path.join(self.log_dir, run),
                f".{os.getpid()}.{next(_WRITER_IDS):06d}",
                self.purge_step,
            )
            self._files[run] = event_file
        return event_file

    def _flush(self) -> None:
        for event_file in self._files.values():
            event_file.flush()

    def _flush_and_measure(self) -> None:
        self._flush()
        self._measured = self._digests.measure(self.log_dir, RUNS)

    def _scalars(self, step: int, runs: dict[str, dict[str, float]]) -> None:
        for run, tags in runs.items():
            if tags:
                event_file = self._file(run)
                for tag, value in tags.items():
                    event_file.add_scalar(tag, value, step)
                    self.scalars_written += 1

    def _histograms(self, epoch: int, histograms: tuple[WeightHistogram, ...]) -> None:
        event_file = self._file(TRAIN_RUN)
        for histogram in histograms:
            if not histogram.bucket_counts:
                continue  # no finite value: nothing TensorBoard can draw
            event_file.add_histogram_raw(
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

    def _images(self, epoch: int, images: tuple[WeightImage, ...]) -> None:
        from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboardX.proto.tensor_pb2 import TensorProto
        from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto

        event_file = self._file(TRAIN_RUN)
        for image in images:
            # What tf.summary.image writes: [width, height, png...] for the image plugin.
            metadata = SummaryMetadata()
            metadata.plugin_data.plugin_name = "images"
            strings = [str(image.width).encode(), str(image.height).encode(), *image.pngs]
            tensor = TensorProto(
                dtype="DT_STRING",
                string_val=strings,
                tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=len(strings))]),
            )
            value = Summary.Value(tag=image.tag, metadata=metadata, tensor=tensor)
            event_file.add_summary(Summary(value=[value]), global_step=epoch)

    def _profile(self, profile: Profile) -> None:
        from tensorboardX.proto.summary_pb2 import Summary

        if profile.error is not None:
            logger.warning("TensorBoard: the chief sent no profile: %s", profile.error)
            return
        train_dir = os.path.join(self.log_dir, TRAIN_RUN)
        for profile_file in profile.files:  # under plugins/profile/: checked when decoded
            path = os.path.join(train_dir, *profile_file.path.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as file:
                file.write(profile_file.data)
        event_file = self._file(TRAIN_RUN)
        for summary in profile.summaries:
            event_file.add_summary(Summary.FromString(summary.summary), global_step=summary.step)

    def _projector(self, layers: list[str]) -> None:
        try:
            projector.write_config(self.log_dir, layers, self.embeddings_metadata)
        except ValueError as exc:  # known only now, from the chief: reported, not raised
            logger.warning("TensorBoard: no projector config written: %s", exc)

    def _graph(self, model_json: str) -> None:
        from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboardX.proto.tensor_pb2 import TensorProto

        # What keras_model_summary writes: TensorBoard's graph plugin draws it.
        metadata = SummaryMetadata()
        metadata.plugin_data.plugin_name = "graph_keras_model"
        metadata.plugin_data.content = b"1"
        tensor = TensorProto(dtype="DT_STRING", string_val=[model_json.encode()])
        summary = Summary(value=[Summary.Value(tag="keras", metadata=metadata, tensor=tensor)])
        self._file(TRAIN_RUN).add_summary(summary, global_step=0)
