"""The journal checks its files before use: a flipped byte, a truncated file or a link in
place of an entry, a commit marker or job.json is a fallback to the generation before
(with a warning naming the file) or an IntegrityError naming it, never another entry."""

import logging
import os
import shutil

import pytest

from distcb.callbacks import EarlyStopping
from distcb.coordinator.journal import Journal, JournalEntry, describe_job
from distcb.protocol.integrity import IntegrityError, seal
from tests.helpers.damage import DAMAGES, damage


def entry(epoch: int) -> JournalEntry:
    return JournalEntry(
        epoch=epoch, callbacks=[{"wait": epoch}, None], learning_rate=0.1 / (epoch + 1)
    )


@pytest.fixture
def journal(tmp_path) -> Journal:
    j = Journal(str(tmp_path / "state"), describe_job(2, [EarlyStopping(patience=3)]))
    j.start()
    for epoch in range(3):
        j.write(entry(epoch))
        j.commit(epoch)
    return j


def state_files(j: Journal) -> list[str]:
    return sorted(os.path.join(j.directory, n) for n in os.listdir(j.directory))


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("name", ["epoch-00000002.json", "epoch-00000002.committed"])
def test_a_damaged_newest_generation_falls_back_to_the_one_before(
    journal, tmp_path, caplog, how, name
):
    path = os.path.join(journal.directory, name)
    damage(path, how, state_files(journal), str(tmp_path / "outside"))
    with caplog.at_level(logging.WARNING, logger="distcb.coordinator"):
        back = journal.latest()
    assert back is not None
    assert back.epoch == 1
    assert back.callbacks[0] == {"wait": 1}
    assert name in caplog.text
    assert "going on from an earlier generation" in caplog.text


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_job_file_is_an_error_naming_it(journal, tmp_path, how):
    path = os.path.join(journal.directory, "job.json")
    damage(path, how, state_files(journal), str(tmp_path / "outside"))
    with pytest.raises(IntegrityError, match="job.json") as raised:
        journal.check_job()
    assert raised.value.path == path


def test_a_link_to_an_intact_copy_is_refused_too(journal, tmp_path):
    # Same bytes, so no checksum could tell: only refusing links does.
    path = os.path.join(journal.directory, "epoch-00000002.json")
    copy = str(tmp_path / "copy.json")
    shutil.copyfile(path, copy)
    os.unlink(path)
    os.symlink(copy, path)
    back = journal.latest()
    assert back is not None
    assert back.epoch == 1


def test_an_entry_resealed_after_its_commit_is_not_the_committed_one(journal):
    # A well-formed, correctly sealed entry that is not what was committed (another
    # generation's bytes under this name, an edit with a recomputed seal).
    path = os.path.join(journal.directory, "epoch-00000002.json")
    changed = entry(2).to_json()
    changed["learning_rate"] = 0.5
    with open(path, "wb") as handle:
        handle.write(seal(changed))
    back = journal.latest()
    assert back is not None
    assert back.epoch == 1


def test_an_entry_of_another_epoch_under_this_name_is_refused(journal):
    newest = os.path.join(journal.directory, "epoch-00000002.json")
    shutil.copyfile(os.path.join(journal.directory, "epoch-00000001.json"), newest)
    back = journal.latest()
    assert back is not None
    assert back.epoch == 1


def test_every_generation_damaged_is_an_error_not_a_fresh_start(journal):
    for epoch in range(3):
        damage(os.path.join(journal.directory, f"epoch-{epoch:08d}.json"), "truncate", [], "unused")
    with pytest.raises(IntegrityError, match=r"epoch-00000002\.json.*no earlier committed"):
        journal.latest()


def test_an_uncommitted_entry_is_still_skipped_without_a_warning(journal, caplog):
    journal.write(entry(3))  # its backups are not complete: not a generation yet
    with caplog.at_level(logging.WARNING, logger="distcb.coordinator"):
        back = journal.latest()
    assert back is not None
    assert back.epoch == 2
    assert caplog.text == ""


def test_commit_blesses_only_an_intact_entry(tmp_path):
    # An entry written by an earlier attempt (this Journal object never wrote it) and
    # damaged since: committing it must not record the damaged bytes' digest.
    state = str(tmp_path / "state")
    first = Journal(state, describe_job(2, []))
    first.start()
    first.write(entry(0))
    damage(os.path.join(state, "epoch-00000000.json"), "flip", [], "unused")
    second = Journal(state, describe_job(2, []))
    with pytest.raises(IntegrityError, match=r"epoch-00000000\.json"):
        second.commit(0)
    assert not os.path.exists(os.path.join(state, "epoch-00000000.committed"))


def test_a_sealed_file_edited_into_other_valid_json_is_refused(journal):
    # Still JSON, still a journal of a job: only the seal tells that it changed.
    path = os.path.join(journal.directory, "job.json")
    with open(path, "rb") as handle:
        data = handle.read()
    assert b'"world_size": 2' in data
    with open(path, "wb") as handle:
        handle.write(data.replace(b'"world_size": 2', b'"world_size": 3'))
    with pytest.raises(IntegrityError, match="do not match its SHA-256"):
        journal.check_job()
