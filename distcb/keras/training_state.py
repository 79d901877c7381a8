"""A Keras 3 model's training state, captured in memory and written off the training thread.

A backup must hold everything training goes on from: every variable of the model (its
weights and the seed generators' states, so that dropout masks continue exactly) and
of its optimizer (its iteration count, learning rate, moments). `capture` takes them on
the training thread at the barrier; `CapturedKerasState.write` writes them later, on the
backup writer's thread (`distcb.worker.backup_writer`), while training goes on.

What `capture` costs depends on the backend:

* TensorFlow: nothing but a read of each variable. The arrays are views of the
  variables' current buffers; TensorFlow never writes a buffer that something else
  still references (its training ops copy a variable's buffer first when it is shared),
  so the views keep the values of the barrier. tests/keras/test_training_state.py trains
  on after a capture, with and without XLA, and checks the captured values did not move.
* other backends (JAX): a copy, since a jitted step may be given the old buffers to
  reuse (JAX's buffer donation).

The file (``training_state.bin``) is a small JSON header naming each variable (its path,
dtype and shape) and then the raw bytes of each, 64-byte aligned; it is hashed while it
is written (the backup's manifest records the digest without reading the file again).
A resume loads it by position, checking that each variable has the shape and dtype
saved: a model built differently fails with a `ValueError` naming the first mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

STATE_FILE = "training_state.bin"
_MAGIC = b"DISTCB-STATE-v1\n"
_ALIGN = 64
_CHUNK = 4 << 20


def state_variables(model: Any) -> list[Any]:
    """The model's variables, then its optimizer's (built first when it is not yet)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)  # its variables exist before they load
    variables = list(model.variables)
    if optimizer is not None:
        seen = {id(v) for v in variables}
        variables += [v for v in optimizer.variables if id(v) not in seen]
    return variables


@dataclass(frozen=True)
class CapturedKerasState:
    """Named arrays holding a model's state as of one moment; written by any thread."""

    arrays: tuple[tuple[str, np.ndarray], ...]
    detached: ClassVar[bool] = True  # the arrays no longer change with the model

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for _, a in self.arrays)

    def write(self, directory: str) -> dict[str, dict[str, Any]]:
        """Write ``training_state.bin`` into `directory` (fsynced); returns its size and
        SHA-256 as the manifest lists them."""
        path = os.path.join(directory, STATE_FILE)
        size, digest = write_arrays(path, self.arrays)
        return {STATE_FILE: {"bytes": size, "sha256": digest}}


def capture(model: Any) -> CapturedKerasState:
    """The model's state now (see the module docstring for what it costs)."""
    import keras

    shares_buffers = keras.backend.backend() == "tensorflow"
    arrays = []
    for variable in state_variables(model):
        if shares_buffers:
            value = np.asarray(variable.value.read_value())
        else:
            value = np.array(keras.ops.convert_to_numpy(variable.value), copy=True)
        arrays.append((str(variable.path), value))
    return CapturedKerasState(tuple(arrays))


def load(model: Any, directory: str) -> None:
    """Assign what `CapturedKerasState.write` wrote in `directory` to the model.

    Raises:
        ValueError: the file holds another number of variables, or one of another shape
            or dtype (names it: the backup is of another model).
    """
    saved = read_arrays(os.path.join(directory, STATE_FILE))
    variables = state_variables(model)
    if len(saved) != len(variables):
        raise ValueError(
            f"the backup in {directory} holds {len(saved)} variables, the model and its "
            f"optimizer have {len(variables)}: is it the same model, compiled the same way?"
        )
    for (name, value), variable in zip(saved, variables, strict=True):
        shape = tuple(int(d) for d in variable.shape)
        dtype = np.dtype(_named_dtype(_dtype_name(variable)))
        if value.shape != shape or value.dtype != dtype:
            raise ValueError(
                f"the backup in {directory} holds {name!r} as {value.dtype}{list(value.shape)}, "
                f"the model's variable {variable.path!r} is {dtype}{list(shape)}: is it the "
                "same model?"
            )
    for (_, value), variable in zip(saved, variables, strict=True):
        variable.assign(value)


def write_arrays(path: str, arrays: tuple[tuple[str, np.ndarray], ...]) -> tuple[int, str]:
    """Write `arrays` to the new file `path`, fsynced; returns (size, SHA-256 hex)."""
    entries: list[dict[str, Any]] = []
    offset = 0
    contiguous = []
    for name, array in arrays:
        array = np.require(array, requirements="C")  # (ascontiguousarray makes 0-d 1-d)
        contiguous.append(array)
        entries.append(
            {"path": name, "dtype": array.dtype.name, "shape": list(array.shape), "at": offset}
        )
        offset = _aligned(offset + array.nbytes)
    header = json.dumps({"arrays": entries}, separators=(",", ":")).encode()
    preamble = _MAGIC + struct.pack("<Q", len(header)) + header
    start = _aligned(len(preamble))
    digest = hashlib.sha256()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    size = 0
    try:

        def put(data: memoryview | bytes) -> None:
            nonlocal size
            # Hashed while in cache, then written: the bytes are read from memory once.
            for begin in range(0, len(data), _CHUNK):
                chunk = data[begin : begin + _CHUNK]
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            size += len(data)

        put(preamble + b"\0" * (start - len(preamble)))
        for array, entry in zip(contiguous, entries, strict=True):
            put(b"\0" * (start + int(entry["at"]) - size))
            if array.nbytes:
                put(memoryview(array.reshape(-1).view(np.uint8).data))
        os.fsync(fd)
    finally:
        os.close(fd)
    return size, digest.hexdigest()


def read_arrays(path: str) -> list[tuple[str, np.ndarray]]:
    """The named arrays of a file `write_arrays` wrote (checked against the backup's
    manifest before: `distcb.worker.backup.BackupStore.read_epoch`).

    Raises:
        ValueError: it is not such a file, or is cut short.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 8:
        raise ValueError(f"{path} is not a distcb training state file")
    (length,) = struct.unpack_from("<Q", data, len(_MAGIC))
    begin = len(_MAGIC) + 8
    header = json.loads(data[begin : begin + length])
    start = _aligned(begin + length)
    out = []
    for entry in header["arrays"]:
        dtype = np.dtype(_named_dtype(entry["dtype"]))
        shape = tuple(int(d) for d in entry["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        at = start + int(entry["at"])
        if at + count * dtype.itemsize > len(data):
            raise ValueError(f"{path} is cut short (at {entry['path']!r})")
        value = np.frombuffer(data, dtype=dtype, count=count, offset=at).reshape(shape)
        out.append((str(entry["path"]), value))
    return out


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


def _dtype_name(variable: Any) -> str:
    return str(getattr(variable.dtype, "name", variable.dtype))


def _named_dtype(name: str) -> Any:
    try:
        return np.dtype(name)
    except TypeError:  # bfloat16 and the like: NumPy knows them once ml_dtypes is imported
        import ml_dtypes

        return getattr(ml_dtypes, name)
