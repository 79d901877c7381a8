"""The files the chief saves for the job (ModelCheckpoint's) are recorded with each backup and
checked when a job resumes from it: a flipped byte, a cut-short file or a link is an
IntegrityError naming the file; a save made after the barrier (by an attempt that was then
lost) is told apart from damage by the log written before it took its name. Real files,
the real DecisionApplier and BackupStore; a small file-writing target, and Keras's."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from typing import Any

import pytest

from distcb.protocol.decisions import BackupModel, EffectPoint, SaveModel
from distcb.protocol.errors import IntegrityError
from distcb.protocol.integrity import read_sealed
from distcb.protocol.messages import Resume
from distcb.worker.apply import DecisionApplier, LiveState
from distcb.worker.backup import BackupStore
from distcb.worker.outputs import LOG_NAME
from tests.helpers.damage import damage

END = EffectPoint.epoch_end


class FileModel:
    """A model whose weights are one number, saved as text, atomically (temporary + rename)."""

    snapshot_suffix = ".json"

    def __init__(self, kill_before_replace: bool = False) -> None:
        self.weights = 0.0
        self.kill_before_replace = kill_before_replace

    def save(
        self,
        filepath: str,
        *,
        weights_only: bool,
        overwrite: bool,
        before_replace: Callable[[str], None] | None = None,
    ) -> None:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(filepath), prefix=".distcb-")
        with os.fdopen(fd, "w") as handle:
            handle.write(f"weights {self.weights}\n" * 100)
        if before_replace is not None:
            before_replace(tmp)
        if self.kill_before_replace:  # the process dies here: the temporary file stays
            raise KeyboardInterrupt
        os.replace(tmp, filepath)

    def capture_state(self) -> LiveState:
        return LiveState(self.save_state)

    def save_state(self, directory: str) -> None:
        with open(os.path.join(directory, "state.json"), "w") as handle:
            json.dump({"weights": self.weights}, handle)

    def load_state(self, directory: str) -> None:
        with open(os.path.join(directory, "state.json")) as handle:
            self.weights = json.load(handle)["weights"]

    def stop_training(self) -> None: ...

    def set_learning_rate(self, value: float) -> None: ...

    def get_weights(self) -> Any:
        return self.weights

    def set_weights(self, weights: Any) -> None:
        self.weights = weights

    def save_snapshot(self, weights: Any, path: str) -> None: ...

    def load_snapshot(self, path: str) -> Any: ...


def chief(run_dir: str, model: FileModel | None = None) -> DecisionApplier:
    """Rank 0 of a journaled job (a fresh process each time)."""
    store = BackupStore(os.path.join(run_dir, "backups"), rank=0, owner=0)
    applier = DecisionApplier(model or FileModel(), 0, store)
    applier.persist_snapshots = True  # what Start(persist_snapshots=True) sets
    return applier


def epoch(applier: DecisionApplier, e: int, *saves: str) -> None:
    """Epoch `e`'s barrier: the weights change, `saves` are saved, then the backup."""
    applier.target.weights = float(e)  # type: ignore[attr-defined]
    decisions = [SaveModel(at=END(e), filepath=path) for path in saves]
    reports = applier.apply(
        [*decisions, BackupModel(at=END(e), epoch=e)], epoch=e, step=-1, max_step_begun=3
    )
    applier.drain()  # the backup is persisted by the writer, which reports it
    reports += applier.take_late_reports()
    assert all(getattr(r, "error", None) is None for r in reports), reports


def resume(run_dir: str, e: int) -> DecisionApplier:
    applier = chief(run_dir)
    applier.resume(Resume(epoch=e))
    return applier


@pytest.fixture
def job(tmp_path):
    """Epochs 0-2 backed up; best.txt saved at epochs 0 and 1, last.txt at every epoch."""
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    best, last = os.path.join(run_dir, "best.txt"), os.path.join(run_dir, "last.txt")
    applier = chief(run_dir)
    epoch(applier, 0, best, last)
    epoch(applier, 1, best, last)
    epoch(applier, 2, last)
    return run_dir, best, last


def test_the_backup_lists_each_saved_file_with_its_checksum(job):
    run_dir, best, last = job
    manifest = read_sealed(
        os.path.join(run_dir, "backups", "rank-0", "epoch-00000002", "manifest.json")
    )
    assert sorted(manifest["outputs"]) == [best, last]
    assert manifest["outputs"][best]["bytes"] == os.path.getsize(best)
    resumed = resume(run_dir, 2)
    assert resumed.outputs is not None
    assert resumed.outputs.recorded == manifest["outputs"]
    # The record goes on into the resumed job's backups: best.txt is not saved again.
    epoch(resumed, 3)
    later = read_sealed(
        os.path.join(run_dir, "backups", "rank-0", "epoch-00000003", "manifest.json")
    )
    assert later["outputs"] == manifest["outputs"]


@pytest.mark.parametrize("how", ["flip", "truncate", "symlink"])
@pytest.mark.parametrize("which", ["best", "last"])
def test_a_damaged_output_fails_the_resume_naming_the_file(job, tmp_path, how, which):
    run_dir, best, last = job
    path = best if which == "best" else last
    damage(path, how, [], str(tmp_path / "outside"))  # a link: to an intact copy
    with pytest.raises(IntegrityError) as raised:
        resume(run_dir, 2)
    assert raised.value.path == path
    message = str(raised.value)
    assert path in message
    assert "restore it from a copy, or remove it" in message
    expected = {"flip": "is damaged", "truncate": "bytes", "symlink": "symbolic link"}[how]
    assert expected in message


def test_a_save_after_the_barrier_is_not_damage(job):
    # The lost attempt saved best.txt in epoch 3 and died before its backup of epoch 3.
    run_dir, best, _ = job
    lost = resume(run_dir, 2)
    lost.target.weights = 3.0  # type: ignore[attr-defined]
    lost.apply([SaveModel(at=END(3), filepath=best)], epoch=3, step=-1, max_step_begun=3)
    resumed = resume(run_dir, 2)  # the replay saves it again (or not: it is the job's file)
    assert resumed.outputs is not None
    with open(best) as handle:
        assert handle.read().startswith("weights 3.0")
    assert resumed.outputs.recorded[best]["bytes"] == os.path.getsize(best)


def test_a_kill_between_the_log_and_the_rename_leaves_the_recorded_file(job):
    run_dir, best, _ = job
    lost = resume(run_dir, 2)
    lost.target.kill_before_replace = True  # type: ignore[attr-defined]
    with pytest.raises(KeyboardInterrupt):
        lost.apply([SaveModel(at=END(3), filepath=best)], epoch=3, step=-1, max_step_begun=3)
    resume(run_dir, 2)  # the old file, which the backup lists


def test_an_older_save_put_back_is_refused(job, tmp_path):
    # best.txt of epoch 0 (a file this job wrote, but not the one it held at barrier 2).
    run_dir, best, _ = job
    other = str(tmp_path / "other")
    os.makedirs(other)
    early = chief(other)
    epoch(early, 0, os.path.join(other, "best.txt"))
    os.replace(os.path.join(other, "best.txt"), best)
    with pytest.raises(IntegrityError, match="is damaged") as raised:
        resume(run_dir, 2)
    assert raised.value.path == best


def test_a_removed_output_is_a_warning_and_left_out(job, caplog):
    run_dir, best, last = job
    os.unlink(best)
    with caplog.at_level(logging.WARNING, logger="distcb.worker"):
        resumed = resume(run_dir, 2)
    assert f"{best}, saved by this job up to the barrier of epoch 2, is gone" in caplog.text
    assert resumed.outputs is not None
    assert sorted(resumed.outputs.recorded) == [last]


@pytest.mark.parametrize("how", ["flip", "truncate", "symlink"])
def test_a_damaged_log_is_set_aside(job, tmp_path, caplog, how):
    run_dir, best, _ = job
    log = os.path.join(run_dir, "backups", "rank-0", LOG_NAME)
    damage(log, how, [], str(tmp_path / "outside"))
    with caplog.at_level(logging.WARNING, logger="distcb.worker"):
        resume(run_dir, 2)  # the outputs match the backup: the log is not needed
    assert f"{log} cannot be read" in caplog.text


def test_the_log_keeps_only_saves_a_resume_may_meet(tmp_path):
    run_dir = str(tmp_path)
    best = os.path.join(run_dir, "best.txt")
    applier = chief(run_dir)
    for e in range(8):
        epoch(applier, e, best)
    saves = read_sealed(os.path.join(run_dir, "backups", "rank-0", LOG_NAME))["saves"]
    # Backups 5-7 are kept: saves made after backup 4 or later (epochs 5, 6, 7) remain.
    assert [s["after"] for s in saves] == [4, 5, 6]


def test_a_job_that_does_not_journal_records_nothing(tmp_path):
    run_dir = str(tmp_path)
    store = BackupStore(os.path.join(run_dir, "backups"), rank=0, owner=0)
    applier = DecisionApplier(FileModel(), 0, store)
    best = os.path.join(run_dir, "best.txt")
    applier.apply([SaveModel(at=END(0), filepath=best)], epoch=0, step=-1, max_step_begun=3)
    assert os.path.exists(best)
    assert not os.path.exists(os.path.join(run_dir, "backups", "rank-0", LOG_NAME))


def test_keras_target_logs_the_finished_file_before_it_takes_the_name(tmp_path):
    import keras

    from distcb.keras.model_target import KerasModelTarget

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    target = KerasModelTarget(model)
    path = str(tmp_path / "best.weights.h5")
    seen: list[tuple[bytes, bool]] = []

    def hook(finished: str) -> None:
        with open(finished, "rb") as handle:
            seen.append((handle.read(), os.path.exists(path)))

    target.save(path, weights_only=True, overwrite=True, before_replace=hook)
    with open(path, "rb") as handle:
        assert seen == [(handle.read(), False)]


def test_with_a_damaged_log_a_later_save_is_refused_naming_both(job, tmp_path):
    run_dir, best, _ = job
    lost = resume(run_dir, 2)
    lost.target.weights = 3.0  # type: ignore[attr-defined]
    lost.apply([SaveModel(at=END(3), filepath=best)], epoch=3, step=-1, max_step_begun=3)
    log = os.path.join(run_dir, "backups", "rank-0", LOG_NAME)
    damage(log, "flip", [], str(tmp_path / "outside"))
    with pytest.raises(IntegrityError) as raised:
        resume(run_dir, 2)
    assert raised.value.path == best
    assert f"the log of later saves, {log}, could not be read" in str(raised.value)
