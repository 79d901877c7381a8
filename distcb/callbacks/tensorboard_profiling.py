"""Profiling a range of training batches, as Keras's ``TensorBoard(profile_batch=...)`` does.

Keras counts training batches from 1 over the whole ``fit``; when the first
batch of the range begins it turns on TensorFlow's graph tracing and starts
the profiler with ``<log_dir>/train`` as its directory; each profiled batch
runs inside a ``tf.profiler.experimental.Trace`` step; after the last one it
writes the traced graph as the summary ``batch_<last>`` (at step ``last``) and
stops the profiler, which saves ``plugins/profile/<run>/<host>.xplane.pb``.

:class:`BatchProfiler` does that for whoever holds the model: the TensorBoard
callback in a plain ``fit``; the chief worker in a distcb job. The chief
profiles into a directory of its own and sends the result to the coordinator
in ``extras.profile`` (`distcb.keras.profiling.pack_profile`: a ``Profile`` of
``distcb.protocol.worker_data``, whose decoder keeps every file under
``plugins/profile/``); the coordinator's TensorBoard writes the files under its
``train/`` run and the graph summary through its own writer. TensorFlow is
imported only when a profile starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


def parse_profile_batch(profile_batch: Any) -> tuple[int, int]:
    """Keras's `profile_batch`: N, ``"start,stop"``, or ``(start, stop)``; 0 turns it off.

    Raises:
        ValueError: anything else, or a range that is negative or reversed.
    """
    error = (
        "profile_batch must be a non-negative integer or a pair of positive integers "
        f"(start, stop) with start <= stop, or 'start,stop'. Received: {profile_batch!r}"
    )
    value = profile_batch
    if value is None:
        value = 0
    if isinstance(value, str):
        try:
            value = [int(part) for part in value.split(",")]
        except ValueError:
            raise ValueError(error) from None
        value = value[0] if len(value) == 1 else value
    if isinstance(value, bool):
        raise ValueError(error)
    if isinstance(value, int):
        start = stop = value
    elif isinstance(value, tuple | list) and len(value) == 2:
        start, stop = value
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (start, stop)):
            raise ValueError(error)
    else:
        raise ValueError(error)
    if start < 0 or stop < start or (start == 0) != (stop == 0):
        raise ValueError(error)
    return int(start), int(stop)


class BatchProfiler:
    """Profiles global training batches ``start..stop`` (1-based) with TensorFlow.

    Call :meth:`batch_begin` from every ``on_train_batch_begin`` and either
    :meth:`batch_end` from every ``on_train_batch_end`` (when that runs on the
    training thread, in order) or nothing (then the trace of batch ``stop`` ends
    when batch ``stop + 1`` begins); call :meth:`finish` at the end of training
    (and wherever the profile must be complete). Failures to start or stop
    TensorFlow's profiler are logged, never raised, as in Keras.

    Args:
        start, stop: the range of global batches, from :func:`parse_profile_batch`.
        logdir: the profiler's directory (``<log_dir>/train``).
        trace_writer: returns the TensorFlow summary writer for the traced graph.
    """

    def __init__(self, start: int, stop: int, logdir: str, trace_writer: Callable[[], Any]):
        self.start, self.stop = start, stop
        self.logdir = logdir
        self._trace_writer = trace_writer
        self._tracing = False
        self._profiler_started = False
        self._step_trace: Any = None
        self.done = False

    @property
    def tracing(self) -> bool:
        return self._tracing

    def warm_up(self) -> None:
        """Start and drop a profile once, as Keras does before a range that starts later."""
        if self.start > 1 and self._start_profiler(""):
            self._stop_profiler(save=False)

    def batch_begin(self, global_batch: int, batch: int) -> None:
        if self._tracing:
            self._end_step()
            if global_batch > self.stop:
                self.finish()
                return
        elif global_batch == self.start and not self.done:
            import tensorflow as tf

            tf.summary.trace_on(graph=True, profiler=False)
            self._profiler_started = self._start_profiler(self.logdir)
            self._tracing = True
        if self._tracing and self._profiler_started:
            import tensorflow as tf

            self._step_trace = tf.profiler.experimental.Trace("Profiled batch", step_num=batch)
            self._step_trace.__enter__()

    def batch_end(self, global_batch: int) -> None:
        if self._tracing:
            self._end_step()
            if global_batch >= self.stop:
                self.finish()

    def finish(self) -> None:
        """End a running profile: write the graph summary, save the profiler's files."""
        if not self._tracing:
            return
        import tensorflow as tf

        self._end_step()
        self._tracing = False
        self.done = True
        with self._trace_writer().as_default():
            tf.summary.trace_export(name=f"batch_{self.stop}", step=self.stop)
        if self._profiler_started:
            self._stop_profiler(save=True)

    def _end_step(self) -> None:
        if self._step_trace is not None:
            self._step_trace.__exit__(None, None, None)
            self._step_trace = None

    def _start_profiler(self, logdir: str) -> bool:
        import tensorflow as tf

        try:
            tf.profiler.experimental.start(logdir=logdir)
        except Exception as exc:  # another profiler runs: not fatal, as in Keras
            logger.error("Failed to start profiler: %s", exc)
            return False
        return True

    def _stop_profiler(self, save: bool) -> None:
        import tensorflow as tf

        try:
            tf.profiler.experimental.stop(save=save)
        except Exception as exc:
            logger.error("Failed to stop profiler: %s", exc)
        finally:
            self._profiler_started = False
