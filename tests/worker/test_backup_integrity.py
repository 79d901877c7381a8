"""A worker's backups are checked against their manifest before they are read: a damaged,
cut-short, missing or linked file (or directory) is an IntegrityError naming it."""

import os

import numpy as np
import pytest

from distcb.protocol.integrity import IntegrityError
from distcb.worker.backup import BackupStore
from tests.helpers.damage import DAMAGES, damage, files_under


def save(epoch: int):
    def write(directory: str) -> None:
        np.save(os.path.join(directory, "weights.npy"), np.full(100, float(epoch)))
        os.makedirs(os.path.join(directory, "variables"))  # tf_keras writes a tree
        with open(os.path.join(directory, "variables", "state.txt"), "w") as handle:
            handle.write(f"epoch {epoch}\n" * 10)

    return write


def snapshot(value: float):
    def write(path: str) -> None:
        with open(path, "wb") as handle:
            np.save(handle, np.full(50, value))

    return write


@pytest.fixture
def store(tmp_path) -> BackupStore:
    s = BackupStore(str(tmp_path / "backups"), rank=1, owner=1)
    s.write_snapshot(7, ".npy", snapshot(7.0))
    for epoch in range(3):
        s.write_epoch(epoch, save(epoch), snapshots=[7])
    return s


def test_an_intact_backup_reads_back_with_its_snapshots(store):
    path = store.read_epoch(2)
    assert np.load(os.path.join(path, "weights.npy"))[0] == 2.0
    fresh = BackupStore(store.root, rank=1, owner=1)  # a restarted process
    fresh.read_epoch(2)
    assert np.load(fresh.read_snapshot(7, ".npy"))[0] == 7.0


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", ["weights.npy", "variables/state.txt", "manifest.json"])
def test_a_damaged_backup_file_is_an_error_naming_it(store, tmp_path, how, name):
    root = store.root
    candidates = [os.path.join(root, f) for f in files_under(root)]
    path = os.path.join(store.epoch_dir(2), name)
    damage(path, how, candidates, str(tmp_path / "outside"))
    with pytest.raises(IntegrityError) as raised:
        store.read_epoch(2)
    assert raised.value.path == path
    message = str(raised.value)
    assert path in message
    assert "remove epoch-00000002.committed" in message
    store.read_epoch(1)  # the generation before is intact


def test_a_backup_directory_replaced_by_a_link_is_refused(store):
    target = store.epoch_dir(2)
    os.rename(target, target + "-moved")
    os.symlink(store.epoch_dir(1), target)  # epoch 1's backup under epoch 2's name
    with pytest.raises(IntegrityError, match="symbolic link") as raised:
        store.read_epoch(2)
    assert raised.value.path == target


def test_another_epochs_backup_under_this_name_is_refused(store):
    target = store.epoch_dir(2)
    os.rename(target, target + "-moved")
    os.rename(store.epoch_dir(1), target)
    with pytest.raises(IntegrityError, match="manifest of epoch 1"):
        store.read_epoch(2)


def test_a_missing_file_is_an_error_naming_it(store):
    path = os.path.join(store.epoch_dir(2), "weights.npy")
    os.unlink(path)
    with pytest.raises(IntegrityError, match="is missing") as raised:
        store.read_epoch(2)
    assert raised.value.path == path


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_snapshot_is_an_error_naming_it(store, tmp_path, how):
    other = store.snapshot_path(8, ".npy")
    store.write_snapshot(8, ".npy", snapshot(8.0))
    fresh = BackupStore(store.root, rank=1, owner=1)
    fresh.read_epoch(2)
    path = fresh.snapshot_path(7, ".npy")
    damage(path, how, [other], str(tmp_path / "outside"))
    with pytest.raises(IntegrityError) as raised:
        fresh.read_snapshot(7, ".npy")
    assert raised.value.path == path


def test_a_snapshot_the_backup_does_not_list_is_refused(store):
    fresh = BackupStore(store.root, rank=1, owner=1)
    fresh.read_epoch(2)
    store.write_snapshot(9, ".npy", snapshot(9.0))  # after epoch 2's backup
    with pytest.raises(IntegrityError, match="no checksum recorded"):
        fresh.read_snapshot(9, ".npy")


def test_a_backup_written_again_replaces_a_link_without_following_it(store, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not distcb's")
    target = store.epoch_dir(2)
    os.rename(target, target + "-moved")
    os.symlink(elsewhere, target)
    store.write_epoch(2, save(2), snapshots=[7])  # the same epoch again after a rollback
    assert (elsewhere / "keep.txt").read_text() == "not distcb's"
    assert not os.path.islink(target)
    store.read_epoch(2)


def test_the_error_survives_pickling_with_the_file_named(store):
    # A launcher carries a worker's error across processes.
    import pickle

    os.unlink(os.path.join(store.epoch_dir(2), "weights.npy"))
    with pytest.raises(IntegrityError) as raised:
        store.read_epoch(2)
    back = pickle.loads(pickle.dumps(raised.value))
    assert (type(back), back.path, str(back)) == (
        IntegrityError,
        raised.value.path,
        str(raised.value),
    )
