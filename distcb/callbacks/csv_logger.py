"""CSVLogger: one row per epoch of the aggregated logs, byte for byte as Keras writes it.

The file has one writer, the coordinator. The hook formats the row (columns
fixed at the first epoch as ``sorted(keys)``, ``val_`` copies filled with
``NA`` when no ``val_`` key exists, 0-based ``epoch``, lists as ``"[a, b]"``)
and, when the coordinator lent a runtime, hands the text to a private writer
thread, so the epoch barrier never waits on the disk. Each epoch's text goes
out in one ``write`` followed by a flush, so a reader never sees half a row.

The file is opened in ``on_train_begin`` on the calling thread, as Keras does:
a path that cannot be opened fails before training starts instead of
vanishing into a background thread. Without a runtime (hooks driven directly)
every write happens in the hook.

A resumable job journals the sink's state at every barrier (`get_state`, after
`sync` fsynced the rows): the lines, and the byte count and SHA-256 of every
byte the file holds up to then, kept up to date row by row as rows are encoded
(never by reading the file again). A resumed job checks the file's first bytes
against them before it cuts the file back to the barrier: rows changed, cut
short or a file replaced by a link fail the resume with an `IntegrityError`
naming the file, instead of a resumed job that ends exit 0 with a CSV that is
not the job's. An entry journaled before these fields existed is checked as
it was then: the file must hold the lines it counts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import csv
import errno
import hashlib
import io
import locale
import logging
import os
import stat
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

import numpy as np

from distcb.callbacks.base import Callback, Logs
from distcb.callbacks.extension import Runtime
from distcb.protocol.errors import IntegrityError
from distcb.protocol.integrity import hash_into

logger = logging.getLogger(__name__)


def _cell(value: Any) -> Any:
    """A log value as Keras's CSVLogger puts it in a cell."""
    if isinstance(value, str):
        return value
    if isinstance(value, Iterable) and not (isinstance(value, np.ndarray) and value.ndim == 0):
        return '"[' + ", ".join(str(item) for item in value) + ']"'
    return value


class CSVLogger(Callback):
    """Stream each epoch's aggregated logs to a CSV file (``keras.callbacks.CSVLogger``).

    Args:
        filename: path of the CSV file (str or ``os.PathLike``).
        separator: the cell separator.
        append: append to an existing file (the header is written only when the
            file is missing or empty) instead of overwriting it.
    """

    decides_on_batch = False
    observes_only = True  # runs after the workers are released (DESIGN principle 3)

    def __init__(
        self, filename: str | os.PathLike[str], separator: str = ",", append: bool = False
    ):
        super().__init__()
        self.filename = os.fspath(filename)
        self.sep = separator
        self.append = append
        self.keys: list[str] | None = None
        self._runtime: Runtime | None = None
        self._file: BinaryIO | None = None
        # What a text-mode `open` would write (Keras's): the locale's encoding, "\n" as
        # os.linesep. Rows are encoded here so that the bytes hashed are the bytes written.
        self._encoding = locale.getpreferredencoding(False)
        self._needs_header = True
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed: concurrent.futures.Future[None] | None = None
        self._failed = False
        self._lines = 0  # lines in the file (header included; an appended file's too)
        self._bytes = 0  # bytes in the file, and their SHA-256 (an appended file's too)
        self._digest = hashlib.sha256()
        self._resume: dict[str, Any] | None = None
        self._rows_written = 0

        class _Dialect(csv.excel):
            delimiter = separator

        self._dialect = _Dialect

    def set_runtime(self, runtime: Runtime) -> None:
        """Receive the coordinator's runtime: writes then happen on a writer thread."""
        self._runtime = runtime

    def __getstate__(self) -> dict[str, Any]:
        # A launcher ships its callbacks to the coordinator (a Ray actor, a Tune trial) by
        # pickling them before they run; a SHA-256 object cannot be pickled, and the copy's
        # `on_train_begin` starts its hash anew (or from the file a resume checks).
        state = self.__dict__.copy()
        state["_digest"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._digest = hashlib.sha256()

    def statistics(self) -> dict[str, Any]:
        """The file, the epoch rows written to it (and flushed) so far, and whether a write
        failed (later rows are then dropped)."""
        return {
            "file": self.filename,
            "rows_written": self._rows_written,
            "write_failed": self._failed,
        }

    # ------------------------------------------------------------------ hooks

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self._close_file()
        if self._resume is not None:  # a resumed job: the file as it was then
            resume, self._resume = self._resume, None
            self._file, self._bytes, self._digest = _reopen_at_barrier(
                self.filename,
                lines=int(resume["lines"]),
                size=resume.get("bytes"),
                sha256=resume.get("sha256"),
            )
            self._lines = int(resume["lines"])
            self._needs_header = bool(resume.get("needs_header", False))
            self._failed = False
            self._closed = None
            if self._runtime is not None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="distcb-csv"
                )
            return
        self._lines = 0
        self._bytes, self._digest = 0, hashlib.sha256()
        if self.append and os.path.exists(self.filename):
            with open(self.filename) as existing:
                self._needs_header = not existing.readline()
                self._lines = 0 if self._needs_header else 1 + sum(1 for _ in existing)
            with open(self.filename, "rb") as existing_bytes:
                self._bytes, self._digest = _hash_prefix(existing_bytes, None)
        else:
            self._needs_header = True
        self._file = open(self.filename, "ab" if self.append else "wb")  # noqa: SIM115
        self.keys = None
        self._failed = False
        self._rows_written = 0
        self._closed = None
        if self._runtime is not None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="distcb-csv"
            )

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        logs = logs or {}
        text = io.StringIO()
        writer = csv.writer(text, dialect=self._dialect)
        if self.keys is None:
            self.keys = sorted(logs)
            if self.keys and not any(k.startswith("val_") for k in self.keys):
                self.keys += [f"val_{k}" for k in self.keys]
            if self._needs_header:
                writer.writerow(["epoch", *self.keys])
                self._lines += 1
        writer.writerow([epoch, *(_cell(logs.get(k, "NA")) for k in self.keys)])
        self._lines += 1
        data = self._encode(text.getvalue())
        # Counted here, with the lines, so that one get_state() is one consistent triple;
        # sync() makes them the file's before the journal records them.
        self._bytes += len(data)
        self._digest.update(data)
        self._run(self._write, data)

    def on_train_end(self, logs: Logs | None = None) -> None:
        if self._executor is None:
            self._close_file()
            return
        executor, self._executor = self._executor, None
        self._closed = executor.submit(self._close_file)
        executor.shutdown(wait=False)

    def get_state(self) -> dict[str, Any]:
        """The columns, how many lines the file holds (rows past them go on resume), whether
        the header is still to be written (no row yet), and the byte count and SHA-256 of
        the file's contents (checked on resume)."""
        return {
            "keys": self.keys,
            "lines": self._lines,
            "needs_header": self._needs_header,
            "bytes": self._bytes,
            "sha256": self._digest.hexdigest(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Go on from `get_state()`: the next `on_train_begin` checks the file's first bytes
        against the recorded SHA-256, cuts the file back to them and appends, so it ends as
        an uninterrupted run's would (a state without "bytes"/"sha256", journaled by an
        older distcb, is checked by its line count only)."""
        keys = state.get("keys")
        self.keys = None if keys is None else [str(k) for k in keys]
        size = state.get("bytes")
        digest = state.get("sha256")
        self._resume = {
            "lines": int(state["lines"]),
            "needs_header": bool(state.get("needs_header", False)),
            "bytes": None if size is None else int(size),
            "sha256": None if digest is None else str(digest),
        }

    def sync(self) -> None:
        """Block until every row queued so far is on disk, fsynced (the journal calls this
        before it records how many lines and bytes the file holds)."""
        executor = self._executor
        if executor is not None:
            with contextlib.suppress(RuntimeError):  # shut down: nothing is queued
                executor.submit(self._fsync).result()
        else:
            self._fsync()

    def _fsync(self) -> None:
        handle = self._file
        if handle is not None and not handle.closed:
            handle.flush()
            os.fsync(handle.fileno())

    async def aclose(self) -> None:
        """Wait until every row is on disk and the file is closed."""
        if self._closed is not None:
            await asyncio.wrap_future(self._closed)

    # ------------------------------------------------------------------ writer side

    def _encode(self, text: str) -> bytes:
        if os.linesep != "\n":
            text = text.replace("\n", os.linesep)
        return text.encode(self._encoding)

    def _run(self, fn: Callable[[bytes], None], data: bytes) -> None:
        if self._executor is None:
            fn(data)
        else:
            self._executor.submit(fn, data)

    def _write(self, data: bytes) -> None:
        if self._file is None or self._file.closed:
            raise ValueError(
                f"CSVLogger({self.filename!r}): on_epoch_end was called without on_train_begin; "
                "the file is not open."
            )
        if self._executor is None:
            self._file.write(data)
            self._file.flush()
            self._rows_written += 1
            return
        if self._failed:
            return
        try:
            self._file.write(data)
            self._file.flush()
            self._rows_written += 1
        except OSError as exc:  # a full disk must not end the training it records
            self._failed = True
            logger.warning(
                "CSVLogger could not write %s (%s); later epochs are not written.",
                self.filename,
                exc,
            )

    def _close_file(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()


_WHAT_TO_DO = (
    "; restore the file from a copy, or start the job again in a new run directory "
    "(its rows up to the barrier cannot be written again)"
)


def _hash_prefix(handle: BinaryIO, limit: int | None) -> tuple[int, Any]:
    """(bytes read, their running SHA-256) of `handle`'s next `limit` bytes (None: all)."""
    digest = hashlib.sha256()
    return hash_into(digest, handle, limit), digest


def _reopen_at_barrier(
    path: str, *, lines: int, size: int | None, sha256: str | None
) -> tuple[BinaryIO, int, Any]:
    """Open the CSV file at `path` for appending after what it held at the barrier a job
    resumes from, cutting off what follows (rows of epochs past that barrier); returns the
    file, its size then and the running SHA-256 of its bytes.

    What it held is checked first: its first `size` bytes must have the SHA-256 `sha256`
    (a state journaled without them: the file must hold `lines` complete lines). The file
    is opened without following a symbolic link (``O_NOFOLLOW``): the resumed job
    truncates and rewrites it, and a link could point that at any file.

    Raises:
        IntegrityError: `path` is a link or not a regular file, is shorter than it was at
            the barrier, or its bytes up to the barrier differ from those the job wrote.
    """
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP or os.path.islink(path):
            raise IntegrityError(
                path,
                "is a symbolic link; a resumed job truncates and rewrites its CSV file and "
                "never follows links. Point CSVLogger's filename at the file itself",
            ) from exc
        raise
    handle = os.fdopen(fd, "r+b")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IntegrityError(path, "is not a regular file; CSVLogger writes a regular file")
        if size is not None and sha256 is not None:
            kept, digest = _hash_prefix(handle, size)
            if kept < size:
                raise IntegrityError(
                    path,
                    f"has {kept} bytes, {size} were written up to the barrier the job resumes "
                    "from (cut short or replaced)" + _WHAT_TO_DO,
                )
            if digest.hexdigest() != sha256:
                raise IntegrityError(
                    path,
                    f"is damaged: its first {size} bytes (the rows up to the barrier the job "
                    "resumes from) differ from those the job wrote (SHA-256 "
                    f"{digest.hexdigest()[:12]}... instead of {sha256[:12]}...)" + _WHAT_TO_DO,
                )
        else:
            kept, digest = 0, hashlib.sha256()
            for _ in range(lines):
                line = handle.readline()
                if not line.endswith(b"\n"):
                    raise IntegrityError(
                        path,
                        f"holds fewer complete lines than the {lines} the journal recorded at "
                        "the barrier the job resumes from (cut short or replaced)" + _WHAT_TO_DO,
                    )
                kept += len(line)
                digest.update(line)
        handle.truncate(kept)
        handle.seek(kept)
    except BaseException:
        handle.close()
        raise
    return handle, kept, digest
