"""The callbacks' states before the first barrier, in the journal: a resumed launcher whose
predecessor committed nothing sets its sinks back to them (a CSV with append=True, the
event files of a TensorBoard), not to whatever the dead launcher left."""

import asyncio
import os

from distcb.callbacks import CSVLogger
from distcb.coordinator.resume import Recovery, callback_states


def recovery(run_dir, sink, resume: bool) -> Recovery:
    return Recovery(
        os.path.join(run_dir, "state"),
        world_size=2,
        callbacks=[sink],
        max_restarts=1,
        resume=resume,
        backup_every_epochs=1,
    )


def test_a_resumed_launcher_with_nothing_committed_goes_back_to_the_initial_states(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(
        "epoch,loss,val_loss\n0,1.0,1.1\n"
    )  # a finished run's rows: append=True keeps them
    sink = CSVLogger(str(path), append=True)
    first = recovery(tmp_path, sink, resume=False)
    assert asyncio.run(first.open()) is None
    sink.on_train_begin()
    first.remember_initial(callback_states([sink]))
    sink.on_epoch_end(0, {"loss": 0.5, "val_loss": 0.7})  # then the launcher dies before any commit
    sink._close_file()
    first.close()

    again = CSVLogger(str(path), append=True)
    second = recovery(tmp_path, again, resume=True)
    assert asyncio.run(second.open()) is None
    assert second.initial_states == first.initial_states
    again.set_state(second.initial_states[0])
    again.on_train_begin()
    again.on_epoch_end(0, {"loss": 0.5, "val_loss": 0.7})
    again.on_train_end()
    second.close()
    assert path.read_text() == "epoch,loss,val_loss\n0,1.0,1.1\n0,0.5,0.7\n"


def test_without_resume_the_initial_states_are_not_read(tmp_path):
    sink = CSVLogger(str(tmp_path / "log.csv"))
    first = recovery(tmp_path, sink, resume=False)
    asyncio.run(first.open())
    sink.on_train_begin()
    first.remember_initial(callback_states([sink]))
    sink.on_train_end()
    first.close()
    second = recovery(tmp_path, sink, resume=False)
    assert asyncio.run(second.open()) is None
    assert second.initial_states is None
    second.close()
