"""The job's progress display (distcb/launch/progress.py), driven as the coordinator drives
it: a real Coordinator's callbacks and params, epoch ends in order, a clock held by the test."""

from __future__ import annotations

import io

import pytest

from distcb.callbacks import EarlyStopping, ModelCheckpoint
from distcb.coordinator.engine import Coordinator
from distcb.launch.progress import JobProgress, format_duration
from distcb.protocol.errors import WorkerLostError
from distcb.protocol.messages import Saved


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(callbacks, *, interactive=False, epochs=400, show=True):
    coordinator = Coordinator(callbacks, world_size=2)
    coordinator.params = {"epochs": epochs, "directions": {"val_accuracy": "max"}}
    clock = Clock()
    out = io.StringIO()
    progress = JobProgress(
        coordinator, stream=out, interactive=interactive, interval_s=5.0, clock=clock, show=show
    )
    return coordinator, progress, clock, out


LOSSES = [0.9, 0.7, 0.75, 0.6, 0.65, 0.66, 0.67, 0.68]


def logs(epoch: int) -> dict[str, float]:
    return {
        "loss": LOSSES[epoch] + 0.05,
        "val_loss": LOSSES[epoch],
        "val_accuracy": 0.5 + epoch / 100,
        "learning_rate": 0.001,
    }


def test_a_line_every_interval_with_epoch_metrics_best_and_eta():
    coordinator, progress, clock, out = make([EarlyStopping(monitor="val_loss")])
    for epoch in range(len(LOSSES)):
        progress.epoch_released(epoch, logs(epoch), [])
        clock.now += 2.0  # 2 s per epoch: a line at epochs 1, 4, 7 (5 s apart), then the end
    progress.ended(None)
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "epoch 1/400  loss 0.95  val_loss 0.9  val_accuracy 0.5  best val_loss 0.9 (epoch 1)"
    )
    # 3 epochs in 6 s: 2 s each, 396 epochs left.
    assert lines[1] == (
        "epoch 4/400  loss 0.65  val_loss 0.6  val_accuracy 0.53  best val_loss 0.6 (epoch 4)  "
        f"ETA {format_duration(396 * 2.0)}"
    )
    assert lines[2].startswith("epoch 7/400  ")
    assert "best val_loss 0.6 (epoch 4)" in lines[2]
    assert lines[3].startswith("epoch 8/400  ")  # the last epoch is always shown
    assert "ETA" not in lines[3]
    assert len(lines) == 4
    assert format_duration(792) == "13m12s"


def test_best_follows_the_monitor_direction():
    _, progress, _, out = make([ModelCheckpoint("m.keras", monitor="val_accuracy")])
    for epoch in (0, 1, 2):
        progress.epoch_released(epoch, {**logs(epoch), "val_accuracy": [0.6, 0.9, 0.7][epoch]}, [])
    assert progress.best == (0.9, 1)
    progress.ended(None)
    assert "best val_accuracy 0.7" not in out.getvalue()


def test_interactive_rewrites_one_line_and_ends_it():
    _, progress, clock, out = make([], interactive=True)
    for epoch in range(3):
        progress.epoch_released(epoch, logs(epoch), [])
        clock.now += 1.0
    progress.ended(None)
    text = out.getvalue()
    assert text.count("\n") == 1
    assert text.endswith("\n")
    assert text.count("\r") == 4  # 3 epochs, then the last one again without its ETA
    assert "ETA" in text.split("\r")[2]
    final = text.rstrip().rsplit("\r", 1)[1]
    assert final.startswith("epoch 3/400  ")
    assert "ETA" not in final


def test_ctrl_c_summary_names_the_epoch_and_the_best_checkpoint():
    coordinator, progress, _, out = make(
        [ModelCheckpoint("best.keras", monitor="val_loss", save_best_only=True)], show=False
    )
    for epoch in range(3):
        progress.epoch_released(epoch, logs(epoch), [])
    progress.saved(Saved(rank=0, filepath="/runs/best.keras"))
    coordinator.stop_requested = "Ctrl-C"
    progress.ended(None)
    assert (
        out.getvalue() == "stopped by Ctrl-C after epoch 3; best checkpoint at /runs/best.keras\n"
    )


def test_recovery_summary_names_rank_reason_and_epoch():
    _, progress, _, out = make([], show=False)
    for epoch in range(9):
        progress.epoch_released(epoch, logs(min(epoch, 7)), [])
    progress.restarting(0, WorkerLostError(1, "was killed by signal SIGKILL"))
    progress.ended(None)
    assert (
        out.getvalue()
        == "recovered from 1 failure: rank 1 was killed by signal SIGKILL at epoch 10\n"
    )


def test_bad_interval_is_refused():
    coordinator = Coordinator([], world_size=1)
    with pytest.raises(ValueError, match="interval_s must be > 0 seconds, received 0"):
        JobProgress(coordinator, interval_s=0)


def test_a_long_job_spaces_its_lines_out():
    # One epoch a second for 2 hours: a line every 5 s at first, then every tenth of the
    # time run so far, at least once a minute.
    _, progress, clock, out = make([], epochs=7200)
    shown_at = []
    for epoch in range(7200):
        before = out.getvalue().count("\n")
        progress.epoch_released(epoch, logs(epoch % 8), [])
        if out.getvalue().count("\n") > before:
            shown_at.append(clock.now - 100.0)
        clock.now += 1.0
    gaps = [b - a for a, b in zip(shown_at, shown_at[1:], strict=False)]
    assert gaps[0] == 5.0
    assert all(
        gap >= max(5.0, min(60.0, at / 10)) for gap, at in zip(gaps, shown_at[1:], strict=True)
    )
    assert max(gaps) <= 60.0
    assert len(shown_at) < 7200 / 60 + 40
