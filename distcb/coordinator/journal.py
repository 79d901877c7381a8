"""The coordinator's journal: what the job knew at each epoch barrier, so that it can go on.

At every epoch barrier, once the deciding callbacks and the observers have run,
the coordinator writes one `JournalEntry`: the last completed epoch, every
callback's state (`get_state()`), the decision log, the learning rate in effect,
the weight snapshots still held, and the decisions still to apply. When every
worker that holds weights has backed up that epoch, the entry is committed (a
marker file). A job rolls back to its newest committed entry.

Files, in the state directory (one writer: the coordinator)::

    job.json                       what the job is (world size, callbacks and their
                                   arguments, the workers' fit parameters): a journal of
                                   another job is refused
    initial.json                   every callback's state right after the job's first
                                   on_train_begin: what a resumed job with nothing
                                   committed goes back to (a sink's files before the job)
    epoch-00000012.json            the entry of epoch 12
    epoch-00000012.committed       its workers' backups are complete; holds the entry's
                                   SHA-256

Every file is written atomically (a temporary file, fsync, rename, fsync of the
directory), and sealed JSON (never pickle): its SHA-256 is checked before use and
links are never followed (`distcb.protocol.integrity`). The newest entries are
kept; a committed entry that is torn or damaged (or whose marker is) is skipped
with a warning naming the file, so the job falls back to the generation before
it; a damaged job.json, or every committed generation damaged, is an
`IntegrityError` naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from distcb.protocol.decisions import AnyDecision, Decision
from distcb.protocol.errors import JournalMismatchError
from distcb.protocol.integrity import (
    IntegrityError,
    read_regular,
    read_sealed,
    unseal,
    write_sealed,
)
from distcb.protocol.logs import from_json_value, to_json_value

logger = logging.getLogger("distcb.coordinator")

FORMAT = 1
JOB_FILE = "job.json"
INITIAL_FILE = "initial.json"
KEEP_COMMITTED = 3  # entries kept: this many committed ones, and any newer one
_ENTRY = re.compile(r"^epoch-(\d{8})\.json$")


@dataclass
class JournalEntry:
    """The job as it stood after the barrier of `epoch`.

    Attributes:
        epoch: the last completed epoch.
        callbacks: the state of each callback in chain order (None: it keeps none).
        decisions: the decision log so far, with who made each and when.
        learning_rate: the learning rate in effect for the next epoch.
        snapshots: ids of the weight snapshots the callbacks still hold.
        snapshot_counter: the last snapshot id given out.
        pending: decisions already sent that take effect after this barrier (the next
            epoch's `on_epoch_begin` decisions): sent again when the job resumes here.
        global_step: merged training steps so far.
        stopping: whether the job was ending after this epoch.
    """

    epoch: int
    callbacks: list[dict[str, Any] | None]
    decisions: list[dict[str, Any]] = field(default_factory=list)
    learning_rate: float | None = None
    snapshots: list[int] = field(default_factory=list)
    snapshot_counter: int = 0
    pending: list[Decision] = field(default_factory=list)
    global_step: int = 0
    stopping: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "epoch": self.epoch,
            "callbacks": to_json_value(self.callbacks),
            "decisions": self.decisions,
            "learning_rate": to_json_value(self.learning_rate),
            "snapshots": list(self.snapshots),
            "snapshot_counter": self.snapshot_counter,
            "pending": [msgspec.to_builtins(d) for d in self.pending],
            "global_step": self.global_step,
            "stopping": self.stopping,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JournalEntry:
        if data.get("format") != FORMAT:
            raise ValueError(f"journal format {data.get('format')!r}, expected {FORMAT}")
        rate = from_json_value(data.get("learning_rate"))
        return cls(
            epoch=int(data["epoch"]),
            callbacks=from_json_value(data["callbacks"]),
            decisions=list(data.get("decisions", [])),
            learning_rate=None if rate is None else float(rate),
            snapshots=[int(s) for s in data.get("snapshots", [])],
            snapshot_counter=int(data.get("snapshot_counter", 0)),
            pending=[msgspec.convert(d, AnyDecision) for d in data.get("pending", [])],
            global_step=int(data.get("global_step", 0)),
            stopping=bool(data.get("stopping", False)),
        )


def describe_job(world_size: int, callbacks: Sequence[Any]) -> dict[str, Any]:
    """What identifies a job: its world size and each callback's class and arguments.

    A callback's arguments are its public attributes of plain types as they stand
    before training (its constructor's doing); functions and objects are left out.
    """
    return {
        "world_size": world_size,
        "callbacks": [
            {"class": f"{type(cb).__module__}.{type(cb).__qualname__}", "arguments": _arguments(cb)}
            for cb in callbacks
        ],
    }


def _arguments(callback: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in sorted(vars(callback).items()):
        if name.startswith("_") or name in ("model", "params"):
            continue
        if isinstance(value, bool | int | float | str) or value is None:
            out[name] = to_json_value(value)
        elif isinstance(value, list | tuple) and all(
            isinstance(v, bool | int | float | str) for v in value
        ):
            out[name] = to_json_value(list(value))
    return out


def job_difference(journal: dict[str, Any], now: dict[str, Any]) -> str | None:
    """How the job described by `now` differs from the journal's, in words (None: same)."""
    if journal.get("world_size") != now.get("world_size"):
        return (
            f"the journal is of a job of world_size={journal.get('world_size')}, this job has "
            f"world_size={now.get('world_size')}"
        )
    old, new = journal.get("callbacks", []), now.get("callbacks", [])
    if [c["class"] for c in old] != [c["class"] for c in new]:
        return (
            f"the journal's callbacks are {[c['class'].rsplit('.', 1)[-1] for c in old]}, this "
            f"job's are {[c['class'].rsplit('.', 1)[-1] for c in new]}"
        )
    for index, (before, after) in enumerate(zip(old, new, strict=True)):
        name = after["class"].rsplit(".", 1)[-1]
        for key in sorted(set(before["arguments"]) | set(after["arguments"])):
            was, is_now = before["arguments"].get(key), after["arguments"].get(key)
            if was != is_now:
                return (
                    f"callback {index} ({name}): {key} was {was!r} in the journal, is {is_now!r} "
                    "now"
                )
    return None


class Journal:
    """The journal in `directory` (created if missing).

    Args:
        directory: the coordinator's state directory.
        job: `describe_job(...)` of the running job.
    """

    def __init__(self, directory: str, job: dict[str, Any]):
        self.directory = os.path.abspath(directory)
        self.job = job
        self._written: dict[int, str] = {}  # epoch -> SHA-256 of the entry this process wrote

    # ------------------------------------------------------------------ opening

    def check_job(self) -> bool:
        """Whether the directory holds this job's journal (False: none yet).

        Raises:
            JournalMismatchError: it holds another job's journal (nothing is written).
        """
        path = os.path.join(self.directory, JOB_FILE)
        try:
            recorded = read_sealed(path)  # IntegrityError (loud) when damaged: no fallback
        except FileNotFoundError:
            return False
        difference = job_difference(recorded, self.job)
        if difference is not None:
            raise JournalMismatchError(
                f"{self.directory} holds the journal of another job: {difference}. Use another "
                "run directory, or remove this one to start over."
            )
        return True

    def start(self) -> None:
        """Record this job (a new journal); `check_job` first."""
        os.makedirs(self.directory, exist_ok=True)
        write_sealed(self.directory, JOB_FILE, self.job)

    # ------------------------------------------------------------------ writing

    def write_initial(self, states: Sequence[dict[str, Any] | None]) -> None:
        """Record the callbacks' states before the first barrier (`initial`)."""
        data = {"format": FORMAT, "callbacks": to_json_value(list(states))}
        write_sealed(self.directory, INITIAL_FILE, data)

    def initial(self) -> list[dict[str, Any] | None] | None:
        """The states `write_initial` recorded, or None when it never did.

        Raises:
            IntegrityError: the file is damaged (names it).
        """
        path = os.path.join(self.directory, INITIAL_FILE)
        try:
            data = read_sealed(path)
        except FileNotFoundError:
            return None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise IntegrityError(path, "holds no initial states")
        states: list[dict[str, Any] | None] = from_json_value(data["callbacks"])
        return states

    def write(self, entry: JournalEntry) -> None:
        """Write `entry` (not committed yet)."""
        name = f"epoch-{entry.epoch:08d}.json"
        self._written[entry.epoch] = write_sealed(self.directory, name, entry.to_json())

    def commit(self, epoch: int) -> None:
        """Mark epoch `epoch`'s entry committed (its backups are complete) and prune.

        The marker holds the entry's SHA-256 as written: an entry changed after its commit
        does not pass for committed.
        """
        digest = self._written.get(epoch)
        if digest is None:
            path = os.path.join(self.directory, f"epoch-{epoch:08d}.json")
            try:  # written by an earlier attempt of this process: check it before blessing it
                data = read_regular(path)
                unseal(path, data)
            except FileNotFoundError:
                return  # a commit may arrive before the entry's write on a slow disk: retried
            digest = hashlib.sha256(data).hexdigest()
        write_sealed(
            self.directory, f"epoch-{epoch:08d}.committed", {"epoch": epoch, "entry_sha256": digest}
        )
        self._prune()

    def committed(self, epoch: int) -> bool:
        return os.path.lexists(os.path.join(self.directory, f"epoch-{epoch:08d}.committed"))

    def _prune(self) -> None:
        epochs = self._epochs()
        committed = [e for e in epochs if self.committed(e)]
        if len(committed) <= KEEP_COMMITTED:
            return
        oldest_kept = committed[-KEEP_COMMITTED]
        for epoch in epochs:
            if epoch < oldest_kept:
                for suffix in (".json", ".committed"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.directory, f"epoch-{epoch:08d}{suffix}"))

    # ------------------------------------------------------------------ reading

    def latest(
        self, usable: Callable[[JournalEntry], bool] = lambda entry: True
    ) -> JournalEntry | None:
        """The newest committed entry that passes its checks (and that `usable` accepts),
        or None.

        Raises:
            IntegrityError: there are committed entries, but every one is damaged (names
                the newest damaged file).
        """
        damaged: list[IntegrityError] = []
        for epoch in reversed(self._epochs()):
            if not self.committed(epoch):
                continue
            try:
                entry = self._read_committed(epoch)
            except IntegrityError as exc:
                logger.warning("%s: going on from an earlier generation", exc)
                damaged.append(exc)
                continue
            if usable(entry):
                return entry
        if damaged:
            raise IntegrityError(
                damaged[0].path,
                f"{damaged[0].problem}, and no earlier committed generation is intact "
                f"({len(damaged)} damaged); remove {self.directory} to start over",
            )
        return None

    def _read_committed(self, epoch: int) -> JournalEntry:
        """Epoch `epoch`'s entry, checked against its seal and its commit marker."""
        marker_path = os.path.join(self.directory, f"epoch-{epoch:08d}.committed")
        path = os.path.join(self.directory, f"epoch-{epoch:08d}.json")
        try:
            marker = read_sealed(marker_path)
            data = read_regular(path)
        except FileNotFoundError as exc:
            raise IntegrityError(exc.filename or path, "is missing") from None
        expected = marker.get("entry_sha256") if isinstance(marker, dict) else None
        if hashlib.sha256(data).hexdigest() != expected:
            raise IntegrityError(path, "is not the entry that was committed (SHA-256 differs)")
        try:
            entry = JournalEntry.from_json(unseal(path, data))
        except (ValueError, KeyError, TypeError, msgspec.ValidationError) as exc:
            raise IntegrityError(path, f"holds no journal entry ({exc})") from None
        if entry.epoch != epoch:
            raise IntegrityError(path, f"holds the entry of epoch {entry.epoch}")
        return entry

    def _epochs(self) -> list[int]:
        if not os.path.isdir(self.directory):
            return []
        found = (_ENTRY.match(name) for name in os.listdir(self.directory))
        return sorted(int(m.group(1)) for m in found if m)


def remove_temporaries(directory: str) -> None:
    """Temporary files a killed write left behind (called when a journal opens)."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if name.startswith(".tmp-"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
