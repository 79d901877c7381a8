"""A worker's backups: model and optimizer state at epoch barriers, and weight snapshots.

Layout, under the run directory::

    backups/rank-<r>/epoch-<e>/           the state the target captured at the end of epoch e
                                          (`DecisionTarget.capture_state`), as its writer
                                          wrote it off the training thread
    backups/rank-<r>/epoch-<e>/manifest.json  the size and SHA-256 of each of those files,
                                          of the snapshot files epoch e still holds, and
                                          (the chief) of the files it saved for the job
    backups/rank-<r>/snapshot-<id>.*      a weight snapshot (restore_best_weights)
    backups/rank-0/outputs.json           the chief's saves, logged before each file takes
                                          its name (`distcb.worker.outputs`)

Each backup is written into a temporary directory that is then renamed
(atomic on one file system); a backup that was being written when its
process died leaves only a temporary directory, removed at the next backup.
A backup and the snapshots it lists are checked against its manifest before
they are read, without following links (`distcb.protocol.integrity`): a damaged
one is an `IntegrityError` naming the file, never a resume from other weights.
Workers of a synchronous job (MultiWorkerMirroredStrategy) hold one model:
the chief alone writes, and every worker reads the chief's.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

from distcb.protocol.integrity import (
    IntegrityError,
    check_directory,
    file_digest,
    fsync_directory,
    verify_file,
    verify_manifest,
    write_manifest,
)
from distcb.worker.outputs import parse_recorded

KEEP_EPOCHS = 3  # backups kept: the journal rolls back to one of its newest committed epochs
_EPOCH = re.compile(r"^epoch-(\d{8})$")
_SNAPSHOT = re.compile(r"^snapshot-(\d+)\.")


class BackupStore:
    """One rank's backup directory.

    Args:
        root: ``<run_dir>/backups``.
        rank: this worker's rank.
        owner: the rank whose backups this worker reads and writes (itself, or the chief
            under MultiWorkerMirroredStrategy).
    """

    def __init__(self, root: str, rank: int, owner: int):
        self.root = os.path.abspath(root)
        self.rank = rank
        self.owner = owner
        # snapshot id -> {"file", "bytes", "sha256"}: written by this process, or read from
        # the manifest of the backup a resumed job went on from.
        self.snapshot_digests: dict[int, dict[str, Any]] = {}
        # path -> {"bytes", "sha256"}: the files the chief saved, as the manifest of the
        # backup a resumed job went on from lists them (checked by `distcb.worker.outputs`).
        self.recorded_outputs: dict[str, dict[str, Any]] = {}

    @property
    def writes(self) -> bool:
        """Whether this worker writes backups (it holds its own weights, or is the chief)."""
        return self.rank == self.owner

    @property
    def directory(self) -> str:
        return os.path.join(self.root, f"rank-{self.owner}")

    def epoch_dir(self, epoch: int) -> str:
        return os.path.join(self.directory, f"epoch-{epoch:08d}")

    def write_epoch(
        self,
        epoch: int,
        save: Callable[[str], dict[str, dict[str, Any]] | None],
        snapshots: Iterable[int] = (),
        outputs: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Back up epoch `epoch`: `save(directory)` writes into a fresh directory that then
        takes the backup's name, with a manifest of its files (`save` may return the
        digests of those it hashed while writing), of the `snapshots` it still holds and
        of the `outputs` saved so far (path -> size and SHA-256); older backups beyond
        `KEEP_EPOCHS` go. Called by one thread at a time (the backup writer)."""
        os.makedirs(self.directory, exist_ok=True)
        check_directory(self.directory)
        self._remove_temporaries()
        tmp = tempfile.mkdtemp(prefix=".tmp-epoch-", dir=self.directory)
        try:
            known = save(tmp)
            held = {
                str(i): self.snapshot_digests[i] for i in snapshots if i in self.snapshot_digests
            }
            extra: dict[str, Any] = {"epoch": epoch, "rank": self.owner, "snapshots": held}
            if outputs is not None:
                extra["outputs"] = outputs
            write_manifest(tmp, extra, known=known)
            _fsync_tree(tmp)
            target = self.epoch_dir(epoch)
            if os.path.islink(target):  # never delete through a link
                os.unlink(target)
            elif os.path.isdir(target):  # the same epoch backed up again after a rollback
                shutil.rmtree(target)
            os.rename(tmp, target)
            fsync_directory(self.directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune(epoch)

    def read_epoch(self, epoch: int) -> str:
        """The directory of epoch `epoch`'s backup, checked against its manifest.

        Raises:
            FileNotFoundError: there is none (says where it looked).
            IntegrityError: a file of it is damaged, missing or a link (names the file).
        """
        path = self.epoch_dir(epoch)
        if not os.path.lexists(path):
            raise FileNotFoundError(
                f"rank {self.rank}: no backup of epoch {epoch} in {self.directory}; the journal "
                "and the backups must live on storage every restarted worker can read"
            )
        try:
            check_directory(self.root)
            check_directory(self.directory)
            manifest = verify_manifest(path)
            if manifest.get("epoch") != epoch:
                raise IntegrityError(
                    os.path.join(path, "manifest.json"),
                    f"is the manifest of epoch {manifest.get('epoch')!r}",
                )
            snapshots = {int(i): dict(d) for i, d in manifest.get("snapshots", {}).items()}
            outputs = parse_recorded(manifest.get("outputs"))
        except (IntegrityError, ValueError, TypeError, AttributeError, KeyError) as exc:
            where, problem = (
                (exc.path, exc.problem) if isinstance(exc, IntegrityError) else (path, str(exc))
            )
            raise IntegrityError(
                where,
                f"{problem}. rank {self.rank} cannot go on from its backup of epoch {epoch}: "
                f"remove epoch-{epoch:08d}.committed from the journal's directory (the run "
                "directory's state/) to go on from the generation before",
            ) from None
        self.snapshot_digests = snapshots
        self.recorded_outputs = outputs
        return path

    def snapshot_path(self, snapshot_id: int, suffix: str) -> str:
        return os.path.join(self.directory, f"snapshot-{snapshot_id}{suffix}")

    def read_snapshot(self, snapshot_id: int, suffix: str) -> str:
        """The path of a persisted snapshot, checked against its recorded SHA-256.

        Raises:
            IntegrityError: none is recorded, or the file is damaged, missing or a link.
        """
        path = self.snapshot_path(snapshot_id, suffix)
        expected = self.snapshot_digests.get(snapshot_id)
        if expected is None or expected.get("file") != os.path.basename(path):
            raise IntegrityError(path, "has no checksum recorded in the backup resumed from")
        check_directory(self.directory)
        verify_file(path, expected)
        return path

    def write_snapshot(self, snapshot_id: int, suffix: str, save: Callable[[str], None]) -> None:
        """Persist a weight snapshot atomically (`save(path)` writes the file)."""
        os.makedirs(self.directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-snapshot-", suffix=suffix, dir=self.directory)
        os.close(fd)
        os.unlink(tmp)  # let the saver create it (Keras refuses some existing files)
        try:
            save(tmp)
            # Durable before the barrier's backup is reported: a committed barrier may
            # name this snapshot (restore_best_weights after a rollback).
            _fsync_file(tmp)
            size, digest = file_digest(tmp)
            path = self.snapshot_path(snapshot_id, suffix)
            os.replace(tmp, path)
            fsync_directory(self.directory)
            self.snapshot_digests[snapshot_id] = {
                "file": os.path.basename(path),
                "bytes": size,
                "sha256": digest,
            }
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def keep_only_snapshots(self, keep: Iterable[int]) -> None:
        """Remove snapshot files whose ids are not in `keep`."""
        wanted = set(keep)
        self.snapshot_digests = {i: d for i, d in self.snapshot_digests.items() if i in wanted}
        if not os.path.isdir(self.directory):
            return
        for name in os.listdir(self.directory):
            match = _SNAPSHOT.match(name)
            if match and int(match.group(1)) not in wanted:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.directory, name))

    def kept_epochs(self) -> list[int]:
        """The epochs backed up on disk, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        return sorted(
            int(m.group(1)) for m in (_EPOCH.match(n) for n in os.listdir(self.directory)) if m
        )

    def _prune(self, newest: int) -> None:
        epochs = [e for e in self.kept_epochs() if e <= newest]
        for epoch in epochs[:-KEEP_EPOCHS]:
            shutil.rmtree(self.epoch_dir(epoch), ignore_errors=True)

    def _remove_temporaries(self) -> None:
        for name in os.listdir(self.directory):
            if name.startswith(".tmp-"):
                path = os.path.join(self.directory, name)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)


def _fsync_tree(directory: str) -> None:
    for base, _, files in os.walk(directory):
        for name in files:
            _fsync_file(os.path.join(base, name))
        fsync_directory(base)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
