"""Checksummed state files: what the journal and the backups use to notice damage.

A resumable job goes on from files under its run directory: journal entries, commit
markers, the job's identity, each worker's backup and weight snapshots. Any of them
may be damaged between the barrier that wrote it and the resume that reads it (a disk
or file system fault, a copy cut short, a person tidying up). Resuming from a damaged
file would end exit 0 with results that are not the job's, so every such file is
checked before use:

* small JSON files are *sealed*: the file is ``{"sha256": "<hex>", "body": <json>}``
  where the digest covers the body's bytes exactly as written;
* other files (Keras's weights, NumPy archives) are listed with their size and SHA-256
  in a sealed manifest written next to them;
* links are never followed: files open with ``O_NOFOLLOW`` and must be regular files,
  directories are checked with ``lstat``.

A mismatch raises `IntegrityError`, which names the file. The checksums detect
accidents, not an attacker: whoever can write the run directory can also write a
matching digest (the README's security section says so).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import tempfile
from typing import Any, BinaryIO

from distcb.protocol.errors import IntegrityError

_CHUNK_BYTES = 1 << 20
_SEAL = re.compile(rb'^\{"sha256": "([0-9a-f]{64})", "body": ')
_SEAL_END = b"}\n"

__all__ = [
    "hash_into",
    "MANIFEST",
    "IntegrityError",
    "check_directory",
    "file_digest",
    "fsync_directory",
    "open_regular",
    "read_regular",
    "read_sealed",
    "seal",
    "unseal",
    "verify_file",
    "verify_manifest",
    "write_atomically",
    "write_manifest",
    "write_sealed",
]


def hash_into(digest: Any, handle: BinaryIO, limit: int | None = None) -> int:
    """Feed `handle`'s next `limit` bytes (None: the rest) to `digest` (a hashlib object),
    a chunk at a time; the number of bytes there were."""
    size = 0
    while limit is None or size < limit:
        chunk = handle.read(_CHUNK_BYTES if limit is None else min(_CHUNK_BYTES, limit - size))
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
    return size


def open_regular(path: str) -> int:
    """A read-only descriptor of `path`, which must be a regular file and not a link.

    Raises:
        IntegrityError: it is a link, or not a regular file.
        FileNotFoundError: it does not exist.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IntegrityError(
                path, "is a symbolic link; distcb never follows links in its state"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IntegrityError(path, "is not a regular file")
    return fd


def read_regular(path: str) -> bytes:
    """The bytes of `path` (a regular file, not a link; see `open_regular`)."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def file_digest(path: str) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of `path`, read without following a link."""
    fd = open_regular(path)
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def check_directory(path: str) -> None:
    """`path` must be a real directory, not a link to one.

    Raises:
        IntegrityError: it is a link or not a directory.
        FileNotFoundError: it does not exist.
    """
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        raise IntegrityError(path, "is a symbolic link; distcb never follows links in its state")
    if not stat.S_ISDIR(mode):
        raise IntegrityError(path, "is not a directory")


# ---------------------------------------------------------------------- sealed JSON files


def seal(value: Any) -> bytes:
    """`value` as sealed JSON bytes (strict JSON: NaN must be encoded by the caller)."""
    body = json.dumps(value, allow_nan=False, sort_keys=True).encode()
    digest = hashlib.sha256(body).hexdigest()
    return b'{"sha256": "' + digest.encode() + b'", "body": ' + body + _SEAL_END


def unseal(path: str, data: bytes) -> Any:
    """The value sealed in `data` (read from `path`), checked against its digest.

    Raises:
        IntegrityError: the bytes are not a sealed file, or the digest does not match.
    """
    match = _SEAL.match(data)
    if match is None or not data.endswith(_SEAL_END):
        raise IntegrityError(
            path, f"is not a sealed distcb state file (damaged or cut short; {len(data)} bytes)"
        )
    body = data[match.end() : -len(_SEAL_END)]
    actual = hashlib.sha256(body).hexdigest()
    if actual != match.group(1).decode():
        raise IntegrityError(
            path,
            f"is damaged: its contents do not match its SHA-256 ({actual[:12]}... instead "
            f"of {match.group(1).decode()[:12]}...)",
        )
    try:
        return json.loads(body)
    except ValueError as exc:  # a digest that matches a body that is not JSON: a bug of ours
        raise IntegrityError(path, f"holds no JSON ({exc})") from None


def read_sealed(path: str) -> Any:
    """The value of the sealed file `path`, checked (links refused).

    Raises:
        IntegrityError: it is damaged, cut short or a link.
        FileNotFoundError: it does not exist.
    """
    return unseal(path, read_regular(path))


def write_atomically(directory: str, name: str, data: bytes) -> None:
    """Write `data` to directory/name: temporary file, fsync, rename, fsync the directory.

    A link at directory/name is replaced, never written through.
    """
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


def write_sealed(directory: str, name: str, value: Any) -> str:
    """Seal `value` into directory/name atomically; returns the file's SHA-256."""
    data = seal(value)
    write_atomically(directory, name, data)
    return hashlib.sha256(data).hexdigest()


def fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- manifests


MANIFEST = "manifest.json"


def write_manifest(
    directory: str,
    extra: dict[str, Any] | None = None,
    known: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Seal the size and SHA-256 of every file below `directory` into its manifest.

    `known` gives them for files hashed as they were written (by relative path): those
    are not read again."""
    files: dict[str, dict[str, Any]] = {}
    for base, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(base, name)
            relative = os.path.relpath(path, directory)
            if relative == MANIFEST:
                continue
            if known and relative in known:
                files[relative] = {
                    "bytes": int(known[relative]["bytes"]),
                    "sha256": str(known[relative]["sha256"]),
                }
                continue
            size, digest = file_digest(path)
            files[relative] = {"bytes": size, "sha256": digest}
    write_atomically(directory, MANIFEST, seal({"files": files, **(extra or {})}))


def verify_manifest(directory: str) -> dict[str, Any]:
    """Check every file `directory`'s manifest lists; returns the manifest.

    Raises:
        IntegrityError: the directory or a file is a link, a file is missing, damaged or
            of another size, or the manifest itself is damaged (each names the file).
    """
    check_directory(directory)
    path = os.path.join(directory, MANIFEST)
    try:
        manifest = read_sealed(path)
    except FileNotFoundError:
        raise IntegrityError(path, "is missing: the backup cannot be checked") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise IntegrityError(path, "lists no files")
    for relative, expected in sorted(files.items()):
        verify_file(os.path.join(directory, relative), expected, root=directory)
    return manifest


def verify_file(path: str, expected: dict[str, Any], *, root: str | None = None) -> None:
    """`path` must have the size and SHA-256 in `expected` (links refused, also of the
    directories between `root` and it)."""
    if root is not None:
        parent = os.path.dirname(path)
        while os.path.abspath(parent) != os.path.abspath(root):
            check_directory(parent)
            parent = os.path.dirname(parent)
    try:
        size, digest = file_digest(path)
    except FileNotFoundError:
        raise IntegrityError(path, "is missing") from None
    if size != expected.get("bytes"):
        raise IntegrityError(
            path, f"has {size} bytes, {expected.get('bytes')} were written (cut short or changed)"
        )
    if digest != expected.get("sha256"):
        raise IntegrityError(path, "is damaged: its SHA-256 differs from the one recorded")
