"""TensorBoard event files that a resumed job can cut back to a committed barrier.

`EventFile` writes records synchronously, on the caller's thread (the sink's writer
thread): once `flush()` returns, every event written before it is on disk, fsynced.
tensorboardX's `SummaryWriter` queues events for a thread of its own and its `flush()`
does not wait for that queue, so the size of a file at a barrier could not be known.

`event_files` measures the event files of a log directory's runs (what a journal entry
records), and `roll_back` sets them back to such a measure: each file cut to the size it
had, and files that appeared since removed. TensorBoard then reads exactly what it read at
that barrier, in every tag and step space at once (epochs, batch steps, iterations), which
a ``SessionLog.START`` purge step cannot do: it is one step number for all of them.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

EVENT_FILE_PREFIX = "events.out.tfevents."


class EventFile:
    """One event file in `directory`, named as TensorBoard expects (the second it was
    opened, the host, then `suffix`); with `purge_step`, it begins with a
    ``SessionLog.START`` there (TensorBoard then drops earlier files' events at or past it).
    """

    def __init__(self, directory: str, suffix: str, purge_step: int | None = None):
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.record_writer import RecordWriter

        os.makedirs(directory, exist_ok=True)
        name = f"{EVENT_FILE_PREFIX}{int(time.time()):010d}.{socket.gethostname()}{suffix}"
        self.path = os.path.join(directory, name)
        self._records = RecordWriter(self.path)
        self._add(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:
            start = SessionLog(status=SessionLog.START)
            self._add(Event(wall_time=time.time(), step=purge_step, session_log=start))

    def _add(self, event: Any) -> None:
        self._records.write(event.SerializeToString())

    def add_summary(self, summary: Any, global_step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event

        self._add(Event(wall_time=time.time(), step=int(global_step), summary=summary))

    def add_scalar(self, tag: str, value: float, global_step: int) -> None:
        from tensorboardX.summary import scalar

        self.add_summary(scalar(tag, value), global_step)

    def add_histogram_raw(self, tag: str, *, global_step: int, **histogram: Any) -> None:
        from tensorboardX.summary import histogram_raw

        self.add_summary(histogram_raw(tag, **histogram), global_step)

    def flush(self) -> None:
        """Everything written so far is on disk (flushed and fsynced)."""
        self._records.flush()

    def close(self) -> None:
        self._records.flush()
        self._records.close()


def event_files(log_dir: str, runs: Iterable[str]) -> dict[str, int]:
    """``run/name`` -> size in bytes of every event file in the `runs` of `log_dir`."""
    sizes = {}
    for run in runs:
        directory = os.path.join(log_dir, run)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            if name.startswith(EVENT_FILE_PREFIX):
                sizes[f"{run}/{name}"] = os.path.getsize(os.path.join(directory, name))
    return sizes


def roll_back(log_dir: str, runs: Iterable[str], files: Mapping[str, int]) -> None:
    """Set the event files of `runs` back to `files` (from `event_files`): each cut to its
    size there, and each one it does not name (written after that point) removed."""
    for rel, size in event_files(log_dir, runs).items():
        path = os.path.join(log_dir, *rel.split("/"))
        kept = files.get(rel)
        if kept is None:
            os.remove(path)
        elif size > kept:
            with open(path, "r+b") as handle:
                handle.truncate(kept)
                os.fsync(handle.fileno())
        elif size < kept:
            logger.warning(
                "TensorBoard: %s is shorter (%d bytes) than when its epoch was committed "
                "(%d bytes); it was changed outside the job.",
                path,
                size,
                kept,
            )
