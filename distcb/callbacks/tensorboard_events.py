"""TensorBoard event files that a resumed job can cut back to a committed barrier.

`EventFile` writes records synchronously, on the caller's thread (the sink's writer
thread): once `flush()` returns, every event written before it is on disk, fsynced.
tensorboardX's `SummaryWriter` queues events for a thread of its own and its `flush()`
does not wait for that queue, so the size of a file at a barrier could not be known.

`event_files` measures the event files of a log directory's runs (what a journal entry
records), `EventDigests` adds each file's SHA-256 up to that size (hashing only the bytes
appended since the last measure), and `roll_back` sets them back to such a measure: each
file checked against its digest, then cut to the size it had, and files that appeared
since removed. TensorBoard then reads exactly what it read at
that barrier, in every tag and step space at once (epochs, batch steps, iterations), which
a ``SessionLog.START`` purge step cannot do: it is one step number for all of them.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import socket
import stat
import time
from collections.abc import Iterable, Mapping
from typing import Any

from distcb.protocol.errors import IntegrityError
from distcb.protocol.integrity import hash_into

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


class EventDigests:
    """Each event file's size and SHA-256 of its bytes up to that size, kept as running
    hashes: a measure reads only what was appended since the one before (event files
    only grow while a job writes them). Used on one thread: the sink's writer."""

    def __init__(self) -> None:
        self._running: dict[str, tuple[int, Any]] = {}  # rel -> (bytes hashed, sha256 object)

    def __getstate__(self) -> dict[str, Any]:
        # Running hashes cannot be pickled (a launcher pickles its callbacks to ship them);
        # a copy hashes each file anew at its first measure.
        return {"_running": {}}

    def measure(self, log_dir: str, runs: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``run/name`` -> ``{"bytes": size, "sha256": hex}`` for every event file of `runs`."""
        measured: dict[str, dict[str, Any]] = {}
        for rel, size in event_files(log_dir, runs).items():
            done, digest = self._running.get(rel, (0, None))
            if digest is None or done > size:  # new here, or changed outside the job
                done, digest = 0, hashlib.sha256()
            if size > done:
                with open(os.path.join(log_dir, *rel.split("/")), "rb") as handle:
                    handle.seek(done)
                    hash_into(digest, handle, size - done)
            self._running[rel] = (size, digest)
            measured[rel] = {"bytes": size, "sha256": digest.hexdigest()}
        self._running = {rel: self._running[rel] for rel in measured}
        return measured


def roll_back(
    log_dir: str,
    runs: Iterable[str],
    files: Mapping[str, int],
    digests: Mapping[str, str] | None = None,
) -> None:
    """Set the event files of `runs` back to `files` (from `event_files`): each cut to its
    size there, and each one it does not name (written after that point) removed.

    With `digests` (``run/name`` -> SHA-256 of its first `files[run/name]` bytes), every
    recorded file is checked before it is cut: a resumed job must not go on from event
    files other than those it wrote. A file is opened without following a link.

    Raises:
        IntegrityError: a recorded event file is a link or not a regular file, is shorter
            than it was at the barrier, or its bytes up to the barrier differ.
    """
    present = event_files(log_dir, runs)
    for rel, kept in files.items():
        path = os.path.join(log_dir, *rel.split("/"))
        if rel not in present and not os.path.islink(path):
            logger.warning(
                "TensorBoard: %s, written before the committed barrier, is gone; the resumed "
                "job's event files lack what it held.",
                path,
            )
            continue
        expected = None if digests is None else digests.get(rel)
        _check_and_cut(path, int(kept), expected)
    for rel in present:
        if rel not in files:
            os.remove(os.path.join(log_dir, *rel.split("/")))


def _check_and_cut(path: str, kept: int, sha256: str | None) -> None:
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise IntegrityError(
                path,
                "is a symbolic link; a resumed job cuts its TensorBoard event files back to "
                "the committed barrier and never follows links",
            ) from exc
        raise
    with os.fdopen(fd, "r+b") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise IntegrityError(path, "is not a regular file; TensorBoard writes regular files")
        if info.st_size < kept:
            raise IntegrityError(
                path,
                f"holds {info.st_size} bytes, fewer than the {kept} it held at the committed "
                "barrier: it was changed outside the job. Restore it, or start the job again "
                "in a new run_dir",
            )
        if sha256 is not None:
            digest = hashlib.sha256()
            hash_into(digest, handle, kept)
            if digest.hexdigest() != sha256:
                raise IntegrityError(
                    path,
                    f"its first {kept} bytes (what the job had written at the committed "
                    "barrier) differ from those the job wrote: it was changed outside the "
                    "job. Restore it, or start the job again in a new run_dir",
                )
        if info.st_size > kept:
            handle.truncate(kept)
            os.fsync(handle.fileno())
