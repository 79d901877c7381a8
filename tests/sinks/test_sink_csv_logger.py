"""CSVLogger output compared byte for byte with keras.callbacks.CSVLogger; its resume (cut back
to a barrier, checked against the recorded SHA-256) on real files."""

import asyncio
import hashlib
import os

import cloudpickle
import numpy as np
import pytest

from distcb.callbacks.csv_logger import CSVLogger
from distcb.coordinator.runtime import JobState, Runtime
from distcb.protocol.config import Config
from distcb.protocol.errors import IntegrityError
from tests.helpers.sinks import wait_until

WITH_VAL = [
    {"loss": 0.5, "accuracy": np.float32(0.7), "val_loss": 0.6, "val_accuracy": 0.65},
    {"loss": 0.25, "accuracy": np.float32(0.8), "val_loss": np.float64(0.4), "val_accuracy": 0.7},
]
WITHOUT_VAL = [{"loss": 0.5, "mae": 2}, {"loss": 0.125, "mae": 1}]
WITH_LIST = [
    {"loss": 0.5, "per_class": [0.1, 0.2], "vector": np.array([1.5, 2.5], dtype=np.float32)},
    {"loss": 0.4, "per_class": [0.3, 0.4], "vector": np.array([3.0, 4.0], dtype=np.float32)},
]
# A key missing later is written NA; a key appearing later is left out (columns are fixed).
CHANGING_KEYS = [{"loss": 0.5, "val_loss": 0.7}, {"loss": 0.4, "extra": 1.0}]
NOT_NUMBERS = [{"loss": np.array(0.5), "phase": "warmup", "none": None, "flag": True}]

CASES = {
    "with_val": WITH_VAL,
    "without_val": WITHOUT_VAL,
    "with_list": WITH_LIST,
    "changing_keys": CHANGING_KEYS,
    "not_numbers": NOT_NUMBERS,
    "empty_logs": [{}, {}],
}


def drive(callback, model, logs_per_epoch, first_epoch: int = 0) -> None:
    callback.set_model(model)
    callback.on_train_begin()
    for offset, logs in enumerate(logs_per_epoch):
        callback.on_epoch_end(first_epoch + offset, dict(logs))
    callback.on_train_end()


async def drive_ours(callback, model, logs_per_epoch, with_runtime: bool, first_epoch: int = 0):
    if with_runtime:
        loop = asyncio.get_running_loop()
        callback.set_runtime(Runtime(loop, Config(), JobState(num_workers=1)))
    await asyncio.to_thread(drive, callback, model, logs_per_epoch, first_epoch)
    await callback.aclose()


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("with_runtime", [False, True])
async def test_fresh_file_is_byte_identical(tmp_path, keras_model, case, with_runtime):
    import keras

    drive(keras.callbacks.CSVLogger(str(tmp_path / "keras.csv")), keras_model, CASES[case])
    await drive_ours(CSVLogger(tmp_path / "ours.csv"), keras_model, CASES[case], with_runtime)
    expected = (tmp_path / "keras.csv").read_bytes()
    assert (tmp_path / "ours.csv").read_bytes() == expected
    assert expected.startswith(b"epoch")


@pytest.mark.parametrize("existing", ["missing", "empty", "with_rows"])
@pytest.mark.parametrize("with_runtime", [False, True])
async def test_append_is_byte_identical(tmp_path, keras_model, existing, with_runtime):
    import keras

    for name in ("keras.csv", "ours.csv"):
        if existing == "empty":
            (tmp_path / name).write_bytes(b"")
        elif existing == "with_rows":
            drive(keras.callbacks.CSVLogger(str(tmp_path / name)), keras_model, WITH_VAL)
    drive(
        keras.callbacks.CSVLogger(str(tmp_path / "keras.csv"), append=True),
        keras_model,
        WITH_VAL,
        first_epoch=2,
    )
    ours = CSVLogger(tmp_path / "ours.csv", append=True)
    await drive_ours(ours, keras_model, WITH_VAL, with_runtime, first_epoch=2)
    expected = (tmp_path / "keras.csv").read_bytes()
    assert (tmp_path / "ours.csv").read_bytes() == expected
    assert expected.count(b"epoch,") == 1


async def test_separator_and_second_fit(tmp_path, keras_model):
    import keras

    theirs = keras.callbacks.CSVLogger(str(tmp_path / "keras.csv"), separator=";", append=True)
    ours = CSVLogger(tmp_path / "ours.csv", separator=";", append=True)
    for logs in (WITH_VAL, WITHOUT_VAL):  # the same callbacks reused for a second fit
        drive(theirs, keras_model, logs)
        await drive_ours(ours, keras_model, logs, with_runtime=True)
    assert (tmp_path / "ours.csv").read_bytes() == (tmp_path / "keras.csv").read_bytes()


async def test_rows_are_on_disk_after_each_epoch_with_a_runtime(tmp_path):
    ours = CSVLogger(tmp_path / "ours.csv")
    ours.set_runtime(Runtime(asyncio.get_running_loop(), Config(), JobState()))
    await asyncio.to_thread(ours.on_train_begin)
    await asyncio.to_thread(ours.on_epoch_end, 0, {"loss": 1.0})
    path = tmp_path / "ours.csv"
    # Flushed by the writer thread while the file is still open.
    await wait_until(lambda: path.read_bytes() == b"epoch,loss,val_loss\r\n0,1.0,NA\r\n")
    await asyncio.to_thread(ours.on_epoch_end, 1, {"loss": 0.5})
    await wait_until(lambda: path.read_bytes().endswith(b"\r\n1,0.5,NA\r\n"))
    ours.on_train_end()
    await ours.aclose()
    assert ours._file is not None
    assert ours._file.closed


def test_unopenable_path_fails_at_train_begin(tmp_path):
    ours = CSVLogger(tmp_path / "missing_dir" / "log.csv")
    with pytest.raises(FileNotFoundError):
        ours.on_train_begin()


def _resumed(path, lines, keys=("loss",)):
    """A sink resumed from a state journaled by an older distcb: lines, no checksum."""
    sink = CSVLogger(str(path))
    sink.set_state({"keys": list(keys), "lines": lines, "needs_header": False})
    return sink


def _journaled(path, epochs, with_runtime=False):
    """Write `epochs` rows as a job does, and return the state journaled at that barrier
    (after sync, as the journal takes it) and the file's bytes then."""
    sink = CSVLogger(str(path))
    sink.on_train_begin()
    for epoch in range(epochs):
        sink.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1)})
    sink.sync()
    state = sink.get_state()
    sink.on_train_end()
    return state, path.read_bytes()


def _resume(path, state):
    sink = CSVLogger(str(path))
    sink.set_state(state)
    sink.on_train_begin()
    return sink


async def test_the_state_records_size_and_sha256_of_the_bytes_written(tmp_path):
    path = tmp_path / "log.csv"
    sink = CSVLogger(str(path))
    sink.set_runtime(Runtime(asyncio.get_running_loop(), Config(), JobState()))
    await asyncio.to_thread(sink.on_train_begin)
    for epoch in range(3):
        await asyncio.to_thread(sink.on_epoch_end, epoch, {"loss": 0.5 - epoch / 10})
        await asyncio.to_thread(sink.sync)  # as the journal does at each barrier
        state = sink.get_state()
        data = path.read_bytes()
        assert state["bytes"] == len(data)
        assert state["sha256"] == hashlib.sha256(data).hexdigest()
        assert state["lines"] == data.count(b"\n")
    sink.on_train_end()
    await sink.aclose()


def test_an_appended_file_is_hashed_from_its_first_byte(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"epoch,loss,val_loss\r\n0,0.5,NA\r\n")
    sink = CSVLogger(str(path), append=True)
    sink.on_train_begin()
    sink.on_epoch_end(1, {"loss": 0.25})
    sink.sync()
    state = sink.get_state()
    sink.on_train_end()
    assert state["bytes"] == len(path.read_bytes())
    assert state["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_resumed_csv_logger_checks_then_cuts_back_and_goes_on_hashing(tmp_path):
    path = tmp_path / "log.csv"
    state, at_barrier = _journaled(path, 2)
    with open(path, "ab") as handle:
        handle.write(b"2,0.33\r\n3,0.2")  # the lost attempt's rows past the barrier
    sink = _resume(path, state)
    sink.on_epoch_end(2, {"loss": 0.125})
    sink.sync()
    resumed = sink.get_state()
    sink.on_train_end()
    data = path.read_bytes()
    assert data == at_barrier + b"2,0.125,NA\r\n"
    assert resumed["bytes"] == len(data)
    assert resumed["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("damage", ["flip", "truncate", "symlink"])
def test_a_damaged_csv_fails_the_resume_naming_the_file(tmp_path, damage):
    path = tmp_path / "log.csv"
    state, at_barrier = _journaled(path, 3)
    if damage == "flip":  # one byte of a row written before the barrier
        data = bytearray(at_barrier)
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        problem = "is damaged: its first"
    elif damage == "truncate":
        path.write_bytes(at_barrier[: len(at_barrier) // 2])
        problem = f"has {len(at_barrier) // 2} bytes, {len(at_barrier)} were written"
    else:  # an intact copy elsewhere: only refusing links catches it
        copy = tmp_path / "copy.csv"
        copy.write_bytes(at_barrier)
        path.unlink()
        path.symlink_to(copy)
        problem = "is a symbolic link"
    before = path.read_bytes()
    with pytest.raises(IntegrityError) as caught:
        _resume(path, state)
    assert caught.value.path == str(path)
    assert problem in str(caught.value)
    assert path.read_bytes() == before  # nothing cut, nothing rewritten


def test_a_change_past_the_barrier_is_cut_off_not_refused(tmp_path):
    # Bytes after the barrier are the lost attempt's: the resume drops them, whatever they are.
    path = tmp_path / "log.csv"
    state, at_barrier = _journaled(path, 2)
    path.write_bytes(at_barrier + b"\x00garbage")
    sink = _resume(path, state)
    sink.on_train_end()
    assert path.read_bytes() == at_barrier


def test_a_resumed_csv_logger_does_not_follow_a_symlink(tmp_path):
    # The resumed job truncates and rewrites its file: through a link that could be any file.
    target = tmp_path / "elsewhere.txt"
    target.write_bytes(b"precious\r\n" * 3)
    link = tmp_path / "log.csv"
    link.symlink_to(target)
    sink = _resumed(link, lines=1)
    with pytest.raises(IntegrityError, match="is a symbolic link"):
        sink.on_train_begin()
    assert target.read_bytes() == b"precious\r\n" * 3


def test_a_resumed_csv_logger_cuts_back_to_the_barrier_and_appends(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"epoch,loss\r\n0,0.5\r\n1,0.4\r\n2,0.3")  # epoch 2's row half written
    sink = _resumed(path, lines=2)
    sink.on_train_begin()
    sink.on_epoch_end(1, {"loss": 0.25})
    sink.sync()
    state = sink.get_state()
    sink.on_train_end()
    assert path.read_bytes() == b"epoch,loss\r\n0,0.5\r\n1,0.25\r\n"
    # An old entry (lines only) goes on with a checksum from then on.
    assert state["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_resumed_csv_shorter_than_its_barrier_is_refused(tmp_path):
    # Rows the journal counted are gone: resuming would end with a CSV missing them.
    path = tmp_path / "log.csv"
    path.write_bytes(b"epoch,loss\r\n0,0.5\r\n")
    sink = _resumed(path, lines=3)
    with pytest.raises(IntegrityError, match="fewer complete lines than the 3"):
        sink.on_train_begin()
    assert path.read_bytes() == b"epoch,loss\r\n0,0.5\r\n"
    assert os.path.getsize(path) == 19


def test_a_csv_logger_can_be_shipped_and_its_copy_records_what_it_wrote(tmp_path):
    """A launcher pickles its callbacks to ship them (Ray's coordinator actor, Tune): the
    SHA-256 object is not picklable; the copy hashes what it writes, and a copy resumed from
    a journaled state checks the file as the original would."""
    path = tmp_path / "log.csv"
    sink = cloudpickle.loads(cloudpickle.dumps(CSVLogger(str(path))))
    sink.on_train_begin()
    sink.on_epoch_end(0, {"loss": 0.5})
    sink.on_epoch_end(1, {"loss": 0.25})
    sink.sync()
    state = sink.get_state()
    sink.on_train_end()
    data = path.read_bytes()
    assert state["bytes"] == len(data)
    assert data.count(b"\n") == 3
    assert state["sha256"] == hashlib.sha256(data).hexdigest()
    resumed = cloudpickle.loads(cloudpickle.dumps(CSVLogger(str(path))))
    resumed.set_state(state)
    resumed.on_train_begin()
    resumed.on_epoch_end(2, {"loss": 0.125})
    resumed.sync()
    again = resumed.get_state()
    resumed.on_train_end()
    assert again["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
