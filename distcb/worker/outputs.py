"""The files the chief saves for the job (ModelCheckpoint's), recorded so that a resume can
check them.

A saved model file is a result of the job, not state it resumes from, but a resume
relies on it all the same: a best checkpoint saved before the barrier the job goes on
from is not saved again unless the monitored value improves again, so a damaged one
would silently be the job's result. The chief therefore records the size and SHA-256 of
every file it saves:

* in the manifest of each of its backups (`BackupStore.write_epoch(outputs=...)`, sealed):
  the outputs as of that barrier, with their checksums;
* in a small sealed log, ``outputs.json`` next to its backups, written *before* the saved
  file takes its name: a save after the newest barrier (by an attempt that was then lost)
  replaces a file with one the backup does not list, and the log tells that apart from
  damage. A kill between the log's write and the rename leaves the old file, which the
  backup lists. (This is common: a job that fails without restarts left still ends the
  epoch its survivors stopped in, with its callbacks, so a best checkpoint is often saved
  after the newest barrier; only the log names that file, and the resumed job's replay
  saves over it.)

On resume from barrier E the chief checks every output the backup of E lists: it must
have the recorded size and SHA-256, or those of a save logged after E (the replayed epochs
save it again). A link, other bytes or another size fail the resume with an
`IntegrityError` naming the file; a file that is gone is left gone with a warning (a
person removed it: the job goes on without it, and saves it again if an epoch does). A
damaged log is set aside with a warning: only the backup's checksums are accepted then,
and an output that matches only a later save fails the resume, naming both files.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from distcb.protocol.errors import IntegrityError
from distcb.protocol.integrity import file_digest, read_sealed, write_sealed

logger = logging.getLogger("distcb.worker")

LOG_NAME = "outputs.json"
Digest = dict[str, Any]  # {"bytes": int, "sha256": str}

_WHAT_TO_DO = (
    ". It is a file this job saved (a checkpoint) that the epochs after the barrier may "
    "not save again, so going on would end with it as the job's result: restore it from "
    "a copy, or remove it to go on without it"
)


class SavedOutputs:
    """The chief's record of the files it saved: what its next backup lists, and the log.

    Args:
        directory: the chief's backup directory (``<run_dir>/backups/rank-0``).
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.recorded: dict[str, Digest] = {}  # absolute path -> its newest save's digest
        self._later: list[dict[str, Any]] = []  # saves logged, each after backup "after"
        self._last_backup = -1
        # The training thread saves and takes backups; the backup writer prunes the log.
        self._lock = threading.Lock()

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, LOG_NAME)

    def before_replace(self, filepath: str, finished: str) -> Digest:
        """Log the save of `finished` (the complete temporary file) as `filepath`, durably,
        before it takes that name; returns its digest."""
        size, sha256 = file_digest(finished)
        digest = {"bytes": size, "sha256": sha256}
        with self._lock:
            self._later.append(
                {"path": os.path.abspath(filepath), **digest, "after": self._last_backup}
            )
            write_sealed(self.directory, LOG_NAME, {"saves": self._later})
        return digest

    def saved(self, filepath: str, digest: Digest) -> None:
        """`filepath` now holds the file `before_replace` logged."""
        with self._lock:
            self.recorded[os.path.abspath(filepath)] = dict(digest)

    def backing_up(self, epoch: int) -> dict[str, Digest]:
        """The backup of `epoch` is being taken: what it lists (`recorded` now); saves
        from now on come after it."""
        with self._lock:
            self._last_backup = epoch
            return {path: dict(digest) for path, digest in self.recorded.items()}

    def backed_up(self, oldest_kept: int) -> None:
        """A backup is durable, and the oldest kept is of `oldest_kept`: saves logged
        before it can no longer matter to a resume (the backup writer's thread)."""
        with self._lock:
            self._later = [s for s in self._later if s["after"] >= oldest_kept]

    def resume(self, epoch: int, recorded: dict[str, Digest]) -> None:
        """Check the outputs the backup of `epoch` lists (`recorded`), and go on from them.

        Raises:
            IntegrityError: an output is a link, not a regular file, or holds bytes that
                neither the backup nor a later save recorded (names the file).
        """
        later, unreadable = self._read_log()
        accepted: dict[str, set[tuple[int, str]]] = {}
        for save in later:
            if save["after"] >= epoch:
                accepted.setdefault(save["path"], set()).add((save["bytes"], save["sha256"]))
        current: dict[str, Digest] = {}
        for path, expected in sorted(recorded.items()):
            try:
                size, sha256 = file_digest(path)
            except FileNotFoundError:
                logger.warning(
                    "%s, saved by this job up to the barrier of epoch %d, is gone; the job goes "
                    "on without it (an epoch that saves it again writes it anew)",
                    path,
                    epoch,
                )
                continue
            except IntegrityError as exc:
                raise IntegrityError(exc.path, exc.problem + _WHAT_TO_DO) from None
            if (size, sha256) == (expected["bytes"], expected["sha256"]) or (
                size,
                sha256,
            ) in accepted.get(path, set()):
                current[path] = {"bytes": size, "sha256": sha256}
                continue
            if size != expected["bytes"] and not accepted.get(path):
                problem = (
                    f"has {size} bytes, {expected['bytes']} were saved by the barrier of epoch "
                    f"{epoch} the job resumes from (cut short or changed)"
                )
            else:
                problem = (
                    "is damaged: its SHA-256 differs from the file this job saved there by "
                    f"the barrier of epoch {epoch} the job resumes from, and from every save "
                    "after it"
                )
            if unreadable is not None:  # it may be a later save that the log would name
                problem += (
                    f"; the log of later saves, {self.log_path}, could not be read ({unreadable}),"
                    " so a save after the barrier cannot be told from damage"
                )
            raise IntegrityError(path, problem + _WHAT_TO_DO)
        self.recorded = current
        self._later = [s for s in later if s["after"] >= epoch]
        self._last_backup = epoch

    def _read_log(self) -> tuple[list[dict[str, Any]], str | None]:
        """The saves logged so far, and why the log could not be read (None: it could, or
        there is none). A damaged log is set aside: the backup's checksums still apply."""
        try:
            value = read_sealed(self.log_path)
            saves = value["saves"]
            return [
                {
                    "path": str(s["path"]),
                    "bytes": int(s["bytes"]),
                    "sha256": str(s["sha256"]),
                    "after": int(s["after"]),
                }
                for s in saves
            ], None
        except FileNotFoundError:
            return [], None
        except (IntegrityError, KeyError, TypeError, ValueError) as exc:
            problem = exc.problem if isinstance(exc, IntegrityError) else repr(exc)
            logger.warning(
                "%s cannot be read (%s); only the checksums in the backup are accepted for "
                "the files the job saved",
                self.log_path,
                problem,
            )
            return [], problem


def parse_recorded(value: Any) -> dict[str, Digest]:
    """The outputs a backup manifest lists (``{}`` for a manifest written before outputs
    were recorded).

    Raises:
        TypeError, ValueError, KeyError: the value is not a map of path -> digest.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"outputs must be a map, received {type(value).__name__}")
    return {
        str(path): {"bytes": int(d["bytes"]), "sha256": str(d["sha256"])}
        for path, d in value.items()
    }
