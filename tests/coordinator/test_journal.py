"""The journal: atomic JSON entries, commits, generations, and jobs that do not match."""

import json
import math
import os

import pytest

from distcb.callbacks import EarlyStopping
from distcb.coordinator.journal import (
    Journal,
    JournalEntry,
    JournalMismatchError,
    describe_job,
)
from distcb.protocol.decisions import EffectPoint, SetLearningRate


def entry(epoch: int, **changes) -> JournalEntry:
    values = dict(
        epoch=epoch,
        callbacks=[{"best": math.nan, "wait": epoch}, None],
        learning_rate=0.1 / (epoch + 1),
        snapshots=[epoch],
        snapshot_counter=epoch + 1,
        pending=[SetLearningRate(at=EffectPoint.epoch_begin(epoch + 1), learning_rate=0.5)],
        global_step=10 * epoch,
    )
    values.update(changes)
    return JournalEntry(**values)


def journal(tmp_path, patience=3) -> Journal:
    return Journal(str(tmp_path / "state"), describe_job(2, [EarlyStopping(patience=patience)]))


def test_the_newest_committed_entry_comes_back_as_written(tmp_path):
    j = journal(tmp_path)
    assert j.check_job() is False
    j.start()
    assert j.check_job() is True
    assert j.latest() is None
    for epoch in range(3):
        j.write(entry(epoch))
    j.commit(0)
    j.commit(1)
    back = j.latest()  # epoch 2 is written but not committed: its backups are not complete
    assert back is not None
    assert back.epoch == 1
    assert math.isnan(back.callbacks[0]["best"])
    assert back.callbacks[0]["wait"] == 1
    assert back.callbacks[1] is None
    assert back.pending == entry(1).pending
    assert (back.learning_rate, back.snapshots, back.global_step) == (0.05, [1], 10)
    # Strict JSON on disk, NaN included.
    text = (tmp_path / "state" / "epoch-00000001.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the journal"))


def test_a_torn_newest_entry_falls_back_to_the_one_before(tmp_path):
    j = journal(tmp_path)
    j.start()
    for epoch in range(3):
        j.write(entry(epoch))
        j.commit(epoch)
    newest = tmp_path / "state" / "epoch-00000002.json"
    newest.write_text(newest.read_text()[:40])  # a write cut short
    back = j.latest()
    assert back is not None
    assert back.epoch == 1


def test_old_generations_are_pruned_and_temporaries_never_become_entries(tmp_path):
    j = journal(tmp_path)
    j.start()
    for epoch in range(6):
        j.write(entry(epoch))
        j.commit(epoch)
    names = sorted(os.listdir(tmp_path / "state"))
    assert [n for n in names if n.endswith(".json") and n.startswith("epoch")] == [
        "epoch-00000003.json",
        "epoch-00000004.json",
        "epoch-00000005.json",
    ]
    assert not [n for n in names if n.startswith(".tmp-")]


def test_a_journal_of_another_job_is_refused_and_left_untouched(tmp_path):
    j = journal(tmp_path, patience=3)
    j.start()
    j.write(entry(0))
    j.commit(0)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "state").iterdir()}
    other = journal(tmp_path, patience=5)
    with pytest.raises(
        JournalMismatchError, match=r"callback 0 \(EarlyStopping\): patience was 3 .* is 5 now"
    ):
        other.check_job()
    wrong_size = Journal(str(tmp_path / "state"), describe_job(4, [EarlyStopping(patience=3)]))
    with pytest.raises(JournalMismatchError, match="world_size=2, this job has world_size=4"):
        wrong_size.check_job()
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "state").iterdir()}
    assert after == before


def test_job_description_names_callback_classes_and_arguments():
    described = describe_job(3, [EarlyStopping(monitor="loss", patience=2)])
    assert described["world_size"] == 3
    (callback,) = described["callbacks"]
    assert callback["class"].endswith("EarlyStopping")
    assert callback["arguments"]["monitor"] == "loss"
    assert callback["arguments"]["patience"] == 2
