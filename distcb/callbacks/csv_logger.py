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
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import csv
import io
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any, TextIO

import numpy as np

from distcb.callbacks.base import Callback, Logs
from distcb.callbacks.extension import Runtime

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
        self._file: TextIO | None = None
        self._needs_header = True
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed: concurrent.futures.Future[None] | None = None
        self._failed = False
        self._lines = 0  # lines in the file (header included; an appended file's too)
        self._resume_lines: int | None = None
        self._resume_needs_header = False
        self._rows_written = 0

        class _Dialect(csv.excel):
            delimiter = separator

        self._dialect = _Dialect

    def set_runtime(self, runtime: Runtime) -> None:
        """Receive the coordinator's runtime: writes then happen on a writer thread."""
        self._runtime = runtime

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
        if self._resume_lines is not None:  # a resumed job: the file as it was then
            self._file = _reopen_at_line(self.filename, self._resume_lines)
            self._lines, self._resume_lines = self._resume_lines, None
            self._needs_header = self._resume_needs_header
            self._failed = False
            self._closed = None
            if self._runtime is not None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="distcb-csv"
                )
            return
        self._lines = 0
        if self.append and os.path.exists(self.filename):
            with open(self.filename) as existing:
                self._needs_header = not existing.readline()
                self._lines = 0 if self._needs_header else 1 + sum(1 for _ in existing)
        else:
            self._needs_header = True
        self._file = open(self.filename, "a" if self.append else "w")  # noqa: SIM115
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
        self._run(self._write, text.getvalue())

    def on_train_end(self, logs: Logs | None = None) -> None:
        if self._executor is None:
            self._close_file()
            return
        executor, self._executor = self._executor, None
        self._closed = executor.submit(self._close_file)
        executor.shutdown(wait=False)

    def get_state(self) -> dict[str, Any]:
        """The columns, how many lines the file holds (rows past them go on resume), and
        whether the header is still to be written (no row yet)."""
        return {"keys": self.keys, "lines": self._lines, "needs_header": self._needs_header}

    def set_state(self, state: dict[str, Any]) -> None:
        """Go on from `get_state()`: the next `on_train_begin` cuts the file back to the
        lines written then and appends, so it ends as an uninterrupted run's would."""
        keys = state.get("keys")
        self.keys = None if keys is None else [str(k) for k in keys]
        self._resume_lines = int(state["lines"])
        self._resume_needs_header = bool(state.get("needs_header", False))

    def sync(self) -> None:
        """Block until every row queued so far is on disk, fsynced (the journal calls this
        before it records how many lines the file holds)."""
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

    def _run(self, fn: Callable[[str], None], text: str) -> None:
        if self._executor is None:
            fn(text)
        else:
            self._executor.submit(fn, text)

    def _write(self, text: str) -> None:
        if self._file is None or self._file.closed:
            raise ValueError(
                f"CSVLogger({self.filename!r}): on_epoch_end was called without on_train_begin; "
                "the file is not open."
            )
        if self._executor is None:
            self._file.write(text)
            self._file.flush()
            self._rows_written += 1
            return
        if self._failed:
            return
        try:
            self._file.write(text)
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


def _reopen_at_line(path: str, lines: int) -> TextIO:
    """Open the CSV file at `path` for appending after its first `lines` lines, cutting off
    what follows (rows of epochs past the barrier the job resumes from).

    The file is opened without following a symbolic link (``O_NOFOLLOW``): the resumed job
    truncates and rewrites it, and a link could point that at any file.

    Raises:
        OSError: `path` is a symbolic link, or holds fewer lines than the journal recorded
            (the rows it had at the barrier are gone: the CSV could not end as it should).
    """
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if os.path.islink(path):
            raise OSError(
                exc.errno,
                f"CSVLogger: {path} is a symbolic link; a resumed job truncates and rewrites its "
                "log file and does not follow links. Point filename at the file itself",
            ) from exc
        raise
    handle = os.fdopen(fd, "r+b")
    try:
        kept = 0
        for _ in range(lines):
            line = handle.readline()
            if not line.endswith(b"\n"):
                raise OSError(
                    f"CSVLogger: {path} holds fewer complete lines than the {lines} the journal "
                    "recorded at the barrier the job resumes from; it was changed outside the "
                    "job, and cannot be resumed exactly"
                )
            kept += len(line)
        handle.truncate(kept)
        handle.seek(kept)
    except BaseException:
        handle.close()
        raise
    return io.TextIOWrapper(handle, encoding=None, newline=None, write_through=False)
