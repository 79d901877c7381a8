"""Damage done to a run directory's files, as a disk fault, a cut-short copy or a person
tidying up would do it: one flipped byte, a truncated file, a file replaced by a link."""

from __future__ import annotations

import os
import re
import shutil

DAMAGES = ("flip", "truncate", "symlink")


def flip_byte(path: str) -> None:
    """Invert one byte in the middle of `path` (a file of at least one byte)."""
    with open(path, "r+b") as handle:
        data = bytearray(handle.read())
        assert data, f"{path} is empty: no byte to flip"
        index = len(data) // 2
        data[index] ^= 0xFF
        handle.seek(0)
        handle.write(data)


def truncate(path: str) -> None:
    """Cut `path` to half its length (an empty file stays empty)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)


def replace_with_link(path: str, target: str) -> None:
    """Replace `path` by a symbolic link to `target`."""
    os.unlink(path)
    os.symlink(target, path)


def link_target(path: str, candidates: list[str], outside: str) -> str:
    """What a link replacing `path` points at: another file of its kind when one exists
    (another generation's entry, another rank's backup), else an intact copy of the file
    itself placed outside the run directory (only refusing links catches that)."""
    for other in candidates:
        if other != path and kind(other) == kind(path):
            return other
    os.makedirs(outside, exist_ok=True)
    copy = os.path.join(outside, os.path.basename(path))
    shutil.copyfile(path, copy)
    return copy


def kind(path: str) -> str:
    """A file's kind: its path with every number replaced (rank, epoch, snapshot id)."""
    return re.sub(r"\d+", "N", path)


def damage(path: str, how: str, candidates: list[str], outside: str) -> None:
    """Do damage `how` (one of `DAMAGES`) to `path`."""
    if how == "flip":
        flip_byte(path)
    elif how == "truncate":
        truncate(path)
    elif how == "symlink":
        replace_with_link(path, link_target(path, candidates, outside))
    else:
        raise ValueError(f"damage must be one of {DAMAGES}, received {how!r}")


def files_under(root: str, exclude: tuple[str, ...] = ()) -> list[str]:
    """Every regular file below `root` (relative paths, sorted), minus those under `exclude`."""
    found = []
    for base, _, names in os.walk(root):
        for name in names:
            relative = os.path.relpath(os.path.join(base, name), root)
            if not relative.startswith(exclude):
                found.append(relative)
    return sorted(found)
