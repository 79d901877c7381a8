"""What the chaos harness (tests/helpers/chaos.py) needs from inside the job: where it is.

Every process of tests/helpers/resume_job.py, when ``DISTCB_CHAOS`` (JSON) is set, appends one
line per event to the events file it names: ``{"t", "pid", "rank", "event", "epoch"}``
(rank None: the launcher, where the coordinator runs). The harness reads them to know which
phase the job is in, and sends its SIGKILL from outside.

Some phases last a few milliseconds (a backup's files, a journal entry's write and rename,
the commit marker, the train end). Each of ``holds`` names one occurrence of one of them,
held open for ``hold_s`` seconds, in parts around the moments that matter, so that a kill
at a random moment of the window lands before, inside or after the durable step with fair
odds. A hold fires once, and only after the harness armed it (a file next to the events),
so that the occurrence held is the one its kill waits for. Holds only wait: the job
computes what it computes without them (the harness compares every run with an
uninterrupted one).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import types
from collections.abc import Callable
from typing import Any

ENV = "DISTCB_CHAOS"


def _settings() -> dict[str, Any] | None:
    text = os.environ.get(ENV)
    return json.loads(text) if text else None


def mark(event: str, rank: int | None = None, epoch: int | None = None) -> None:
    """Append an event (a no-op without ``DISTCB_CHAOS``)."""
    settings = _settings()
    if settings is None:
        return
    line = json.dumps(
        {"t": time.time(), "pid": os.getpid(), "rank": rank, "event": event, "epoch": epoch}
    )
    fd = os.open(settings["events"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one write: lines never interleave
    finally:
        os.close(fd)


def _hold_for(phase: str, rank: int | None, epoch: int | None) -> float:
    """Seconds to hold this occurrence open (0: no hold names it). A hold fires once, and
    only once the harness armed it (a file), so that it waits for the kill meant for it."""
    settings = _settings()
    for hold in (settings or {}).get("holds", []):
        if hold["phase"] != phase:
            continue
        if hold.get("epoch") is not None and hold["epoch"] != epoch:
            continue
        if hold.get("rank") is not None and hold["rank"] != rank:
            continue
        prefix = f"{settings['events']}.hold-{hold['id']}"  # type: ignore[index]
        if not os.path.exists(prefix + ".armed"):
            continue
        try:
            os.close(os.open(prefix + ".fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        return float(hold["hold_s"])
    return 0.0


# ---------------------------------------------------------------------- the workers


class _WorkerHooks:
    def __init__(self, rank: int):
        self.rank = rank

    def before(self) -> list[Any]:
        """Keras callbacks that go before the WorkerCallback."""
        import keras

        rank = self.rank

        class Before(keras.callbacks.Callback):
            def on_train_begin(self, logs: Any = None) -> None:
                mark("join_begin", rank)

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                mark("epoch_end", rank, epoch)

            def on_train_end(self, logs: Any = None) -> None:
                mark("train_end_begin", rank)
                time.sleep(_hold_for("train_end", rank, None))

        return [Before()] if _settings() is not None else []

    def after(self) -> list[Any]:
        """Keras callbacks that go after the WorkerCallback."""
        import keras

        rank = self.rank

        class After(keras.callbacks.Callback):
            def on_train_begin(self, logs: Any = None) -> None:
                mark("joined", rank)

            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                mark("epoch_begin", rank, epoch)

            def on_train_end(self, logs: Any = None) -> None:
                mark("train_end_done", rank)

        return [After()] if _settings() is not None else []


def install_worker(rank: int) -> _WorkerHooks:
    """Mark and hold a worker's backups (``backup_begin``/``backup_end``); returns the hooks
    whose callbacks mark joining, epochs and the train end."""
    if _settings() is not None:
        from distcb.worker import backup

        original = backup.BackupStore.write_epoch

        def write_epoch(
            self: Any, epoch: int, save: Callable[[str], Any], *args: Any, **kwargs: Any
        ) -> None:
            hold_s = _hold_for("backup", rank, epoch)

            def held_save(directory: str) -> Any:
                time.sleep(hold_s / 2)  # the temporary directory exists, empty
                known = save(directory)
                time.sleep(hold_s / 2)  # its files are written, not yet renamed
                return known

            mark("backup_begin", rank, epoch)
            original(self, epoch, held_save, *args, **kwargs)
            mark("backup_end", rank, epoch)

        backup.BackupStore.write_epoch = write_epoch  # type: ignore[method-assign]
    return _WorkerHooks(rank)


# ---------------------------------------------------------------------- the coordinator


def install_coordinator() -> None:
    """Mark and hold the journal's writes in the launcher: ``journal_begin``/``journal_end``
    around an entry, ``commit_begin``/``commit_end`` around a commit marker."""
    if _settings() is None:
        return
    # The journal writes its entries and commit markers through the integrity module's
    # `write_atomically` (sealed files); the worker processes are not hooked here.
    from distcb.protocol import integrity as journal

    original = journal.write_atomically
    holding: dict[str, float] = {"s": 0.0}

    def write_atomically(directory: str, name: str, *args: Any, **kwargs: Any) -> Any:
        epoch = _epoch_of(name)
        kind = "commit" if name.endswith(".committed") else "journal"
        if epoch is None:
            return original(directory, name, *args, **kwargs)
        hold_s = _hold_for(kind, None, epoch)
        mark(f"{kind}_begin", None, epoch)
        time.sleep(hold_s / 3)  # nothing of it written yet
        holding["s"] = hold_s / 3  # the temporary file written, not renamed (below)
        try:
            result = original(directory, name, *args, **kwargs)
        finally:
            holding["s"] = 0.0
        time.sleep(hold_s / 3)  # renamed, the caller's next step not taken yet
        mark(f"{kind}_end", None, epoch)
        return result

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        time.sleep(holding["s"])
        os.replace(src, dst, *args, **kwargs)

    # The journal module's `os`, with a rename that may wait: the rest of the process keeps
    # the real one.
    proxy = types.ModuleType("os")
    proxy.__dict__.update(os.__dict__)
    proxy.replace = replace  # type: ignore[attr-defined]
    with contextlib.suppress(AttributeError):
        journal.os = proxy  # type: ignore[attr-defined]
    journal.write_atomically = write_atomically  # type: ignore[assignment]
    mark("launcher_start")


def _epoch_of(name: str) -> int | None:
    base = os.path.basename(name)
    if not base.startswith("epoch-"):
        return None
    digits = base[len("epoch-") :].split(".", 1)[0]
    return int(digits) if digits.isdigit() else None
