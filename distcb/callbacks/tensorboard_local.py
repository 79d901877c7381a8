"""TensorFlow summary writers for what a model writes itself, in a plain ``fit``.

Keras's TensorBoard makes its writers TensorFlow's default while the model
trains and evaluates, so that ``tf.summary`` calls inside the model (custom
summaries) land in ``train/`` or ``validation/`` at the global batch, recorded
every ``update_freq`` batches; with ``update_freq="epoch"`` none is made
default. :class:`ModelSummaryWriters` does the same for distcb's TensorBoard
when it has the real model (in a distcb job the model runs on the workers and
its own summaries are not collected). TensorFlow is imported on first use;
without it there is nothing to do.
"""

from __future__ import annotations

import os
from typing import Any


class ModelSummaryWriters:
    """TensorFlow writers for ``log_dir/train`` and ``log_dir/validation``, made default in turn.

    Args:
        log_dir: the TensorBoard log directory.
        every: record the model's summaries every this many batches; None: never
            make a writer default (``update_freq="epoch"``).
    """

    def __init__(self, log_dir: str, every: int | None):
        self._dirs = {run: os.path.join(log_dir, run) for run in ("train", "validation")}
        self._every = every
        self._writers: dict[str, Any] = {}
        self._stack: list[tuple[Any, Any]] = []

    def writer(self, run: str) -> Any:
        """The TensorFlow summary writer of `run` ("train" or "validation"), made on first use."""
        if run not in self._writers:
            import tensorflow as tf

            self._writers[run] = tf.summary.create_file_writer(self._dirs[run])
        return self._writers[run]

    def push(self, run: str, step: int) -> None:
        """Make `run`'s writer the default at `step`, recording when ``step % every == 0``."""
        if self._every is None:
            return
        try:
            import tensorflow as tf
        except ImportError:  # a backend without TensorFlow: no model summaries to collect
            self._every = None
            return
        every = self._every
        contexts = (
            self.writer(run).as_default(step),
            tf.summary.record_if(lambda: step % every == 0),
        )
        for context in contexts:
            context.__enter__()
        self._stack.append(contexts)

    def pop(self) -> None:
        """Restore the writer that was default before the last :meth:`push`."""
        if self._stack:
            writer_context, record_context = self._stack.pop()
            record_context.__exit__(None, None, None)
            writer_context.__exit__(None, None, None)

    def repush(self, run: str, step: int) -> None:
        """The default writer follows the global batch (Keras pops and pushes every batch)."""
        if self._every is not None and self._stack:
            self.pop()
            self.push(run, step)

    def close(self) -> None:
        while self._stack:
            self.pop()
        writers, self._writers = self._writers, {}
        for writer in writers.values():
            writer.close()
