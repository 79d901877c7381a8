"""TensorBoard in a resumed job: the event files, read back as TensorBoard reads them, hold
what an uninterrupted run's hold, whatever was written past the committed barrier.

A job killed after the barrier of epoch 2 went on writing (epoch 3's batch scalars, its
epoch scalars, part of epoch 4); the resumed sink gets the state taken at the barrier and
writes epochs 3 and 4 again. Epoch scalars (step = epoch), batch scalars (step = global
step) and ``evaluation_*_vs_iterations`` (step = iterations) live in one run directory
with three step spaces, so no single purge step can drop exactly the uncommitted events.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import cloudpickle
import pytest

from distcb.callbacks.tensorboard import TensorBoard
from distcb.coordinator.aggregate import Spread
from distcb.coordinator.runtime import JobState, Runtime
from distcb.protocol.config import Config
from distcb.protocol.errors import IntegrityError
from distcb.protocol.worker_data import EpochExtras
from tests.helpers.tensorboard_scalars import read_scalars

EPOCHS = 5
STEPS = 4
BARRIER = 2  # the committed epoch


def batch_logs(epoch: int, step: int) -> dict[str, float]:
    return {"loss": 2.0 / (epoch * STEPS + step + 1)}


def epoch_logs(epoch: int) -> dict[str, float]:
    return {"loss": 1.0 / (epoch + 1), "val_loss": 1.5 / (epoch + 1)}


def train(sink: TensorBoard, state: JobState, epochs: range, stop_after_batch: int = STEPS):
    """The coordinator's hook calls for `epochs` (the last one cut after that many batches),
    with the job's merged step count and spreads; returns the state at each barrier."""
    states = {}
    for epoch in epochs:
        sink.on_epoch_begin(epoch)
        last = epoch == epochs[-1]
        for step in range(stop_after_batch if last else STEPS):
            state.global_step += 1
            state.batch_spread = {"loss": Spread(0.1 * step, 0.2 * step, 0, 1)}
            sink.on_train_batch_begin(step)
            sink.on_train_batch_end(step, batch_logs(epoch, step))
        if last and stop_after_batch < STEPS:
            break
        state.epoch_spread = {"loss": Spread(0.5, 1.5, 1, 0), "val_loss": Spread(1, 2, 0, 1)}
        state.epoch_extras = {0: EpochExtras(iterations=state.global_step)}
        sink.on_epoch_end(epoch, epoch_logs(epoch))
        sink.sync()  # what the journal does before it takes the states
        states[epoch] = sink.get_state()
    return states


async def job(log_dir: str, update_freq: Any, killed_after: tuple[int, int] | None) -> None:
    """An uninterrupted job (killed_after None), or one whose launcher died in epoch e after
    b batches (e, b) and that a new launcher resumed from the barrier of `BARRIER`."""
    loop = asyncio.get_running_loop()
    first = TensorBoard(log_dir, update_freq=update_freq, write_graph=False)
    state = JobState(num_workers=2)
    first.set_runtime(Runtime(loop, Config(), state))
    if killed_after is None:
        await asyncio.to_thread(lambda: (first.on_train_begin(), train(first, state, range(5))))
        first.on_train_end()
        await first.aclose()
        return
    epoch, batches = killed_after

    def killed() -> dict[str, Any]:
        first.on_train_begin()
        states = train(first, state, range(epoch + 1), batches)
        first.sync()  # what the dead launcher's files hold (it wrote them; none is closed)
        return states[BARRIER]

    committed = await asyncio.to_thread(killed)
    second = TensorBoard(log_dir, update_freq=update_freq, write_graph=False)
    resumed = JobState(num_workers=2, global_step=(BARRIER + 1) * STEPS)
    second.set_runtime(Runtime(loop, Config(), resumed))
    second.set_state(committed)

    def go_on() -> None:
        second.on_train_begin()
        train(second, resumed, range(BARRIER + 1, EPOCHS))
        second.on_train_end()

    await asyncio.to_thread(go_on)
    await second.aclose()
    first.on_train_end()  # the dead launcher's executor (its files are already rolled back)


@pytest.mark.parametrize("update_freq", ["epoch", "batch"])
@pytest.mark.parametrize("killed_after", [(3, 2), (3, STEPS), (4, 1)])
async def test_a_resumed_job_reads_back_as_the_uninterrupted_one(
    tmp_path, update_freq, killed_after
):
    reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
    await job(reference, update_freq, None)
    await job(resumed, update_freq, killed_after)
    expected = read_scalars(reference)
    assert [s for s, _ in expected["train"]["epoch_loss"]] == list(range(EPOCHS))
    assert [s for s, _ in expected["validation"]["evaluation_loss_vs_iterations"]] == [
        STEPS * (e + 1) for e in range(EPOCHS)
    ]
    assert read_scalars(resumed) == expected


async def test_the_state_counts_what_is_on_disk_at_the_barrier(tmp_path):
    """The files cut to the sizes the state records hold every scalar up to the barrier:
    `sync` waits for the writes (tensorboardX's own writer queues them on a thread that its
    flush does not wait for)."""
    sink = TensorBoard(str(tmp_path / "tb"), update_freq="batch", write_graph=False)
    state = JobState(num_workers=2)
    sink.set_runtime(Runtime(asyncio.get_running_loop(), Config(), state))
    _, states = await asyncio.to_thread(
        lambda: (sink.on_train_begin(), train(sink, state, range(3)))
    )
    committed = states[1]
    sink.on_train_end()
    await sink.aclose()
    for rel, size in committed["files"].items():
        os.truncate(os.path.join(tmp_path, "tb", rel), size)
    scalars = read_scalars(str(tmp_path / "tb"))
    assert [s for s, _ in scalars["train"]["epoch_loss"]] == [0, 1]
    assert [s for s, _ in scalars["train"]["batch_loss"]] == list(range(1, 2 * STEPS + 1))
    assert [s for s, _ in scalars["validation"]["epoch_loss"]] == [0, 1]


async def test_evaluation_tags_are_the_validation_metrics_only(tmp_path):
    """The spread tags of the validation run are no metrics: no ``evaluation_/...`` tag."""
    await job(str(tmp_path), "epoch", None)
    tags = sorted(read_scalars(str(tmp_path))["validation"])
    assert [t for t in tags if t.startswith("evaluation_")] == ["evaluation_loss_vs_iterations"]


async def test_a_resume_removes_files_written_after_the_barrier_and_keeps_older_ones(tmp_path):
    """Event files that were in the run directories at the barrier (an earlier run's, the
    job's own) stay; the ones that appeared since (a killed attempt's) go."""
    log_dir = tmp_path / "tb"
    older = log_dir / "train" / "events.out.tfevents.1000000000.host.1.000000"
    older.parent.mkdir(parents=True)
    older.write_bytes(b"")
    sink = TensorBoard(str(log_dir), write_graph=False)
    state = JobState(num_workers=1)
    sink.set_runtime(Runtime(asyncio.get_running_loop(), Config(), state))
    _, committed = await asyncio.to_thread(lambda: (sink.on_train_begin(), sink.get_state()))
    await asyncio.to_thread(train, sink, state, range(2))
    sink.on_train_end()
    await sink.aclose()
    assert len(os.listdir(log_dir / "train")) == 2
    again = TensorBoard(str(log_dir), write_graph=False)
    again.set_state(committed)
    again.on_train_begin()
    assert os.listdir(log_dir / "train") == [older.name]
    assert os.listdir(log_dir / "validation") == []
    again.on_train_end()


@pytest.mark.parametrize("how", ["flip", "truncate", "symlink"])
async def test_a_damaged_event_file_fails_the_resume_naming_it(tmp_path, how):
    """An event file the committed barrier counts, changed since (a byte flipped, cut
    shorter, replaced by a link): the resume refuses it, naming the file, instead of going
    on with other scalars than the job wrote; a link's target is left as it was."""
    log_dir = tmp_path / "tb"
    sink = TensorBoard(str(log_dir), update_freq="batch", write_graph=False)
    state = JobState(num_workers=2)
    sink.set_runtime(Runtime(asyncio.get_running_loop(), Config(), state))
    _, states = await asyncio.to_thread(
        lambda: (sink.on_train_begin(), train(sink, state, range(3)))
    )
    committed = states[1]
    sink.on_train_end()
    await sink.aclose()
    rel = max(committed["files"], key=lambda r: committed["files"][r])  # the train run's
    path = log_dir / rel
    outside = tmp_path / "outside"
    if how == "flip":
        data = bytearray(path.read_bytes())
        data[committed["files"][rel] // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "truncate":
        os.truncate(path, committed["files"][rel] // 2)
    else:
        outside.write_bytes(path.read_bytes())
        path.unlink()
        path.symlink_to(outside)
    again = TensorBoard(str(log_dir), update_freq="batch", write_graph=False)
    again.set_state(committed)
    with pytest.raises(IntegrityError) as raised:
        again.on_train_begin()
    assert raised.value.path == str(path)
    if how == "symlink":
        assert outside.stat().st_size > committed["files"][rel]  # not cut through the link


async def test_a_resume_checks_only_what_the_barrier_counted(tmp_path):
    """Bytes past the barrier (the lost attempt's) are cut unchecked: damage there is no
    error, and the resumed files hold exactly the barrier's scalars."""
    log_dir = tmp_path / "tb"
    sink = TensorBoard(str(log_dir), update_freq="batch", write_graph=False)
    state = JobState(num_workers=2)
    sink.set_runtime(Runtime(asyncio.get_running_loop(), Config(), state))
    _, states = await asyncio.to_thread(
        lambda: (sink.on_train_begin(), train(sink, state, range(3)))
    )
    committed = states[1]
    sink.on_train_end()
    await sink.aclose()
    for rel, size in committed["files"].items():
        path = log_dir / rel
        data = bytearray(path.read_bytes())
        if len(data) > size:
            data[-1] ^= 0xFF
            path.write_bytes(bytes(data))
    again = TensorBoard(str(log_dir), update_freq="batch", write_graph=False)
    again.set_state(committed)
    again.on_train_begin()
    again.on_train_end()
    await again.aclose()
    scalars = read_scalars(str(log_dir))
    assert [s for s, _ in scalars["train"]["epoch_loss"]] == [0, 1]


async def test_a_shipped_sink_records_the_digests_of_what_it_wrote(tmp_path):
    """A launcher pickles its callbacks to ship them (Ray's coordinator actor, Tune): the
    copy's running hashes start empty, and what it records at a barrier is the SHA-256 of
    each file's bytes then."""
    log_dir = tmp_path / "tb"
    sink = cloudpickle.loads(cloudpickle.dumps(TensorBoard(str(log_dir), update_freq="batch")))
    assert sink._runs._digests._running == {}
    state = JobState(num_workers=2)
    sink.set_runtime(Runtime(asyncio.get_running_loop(), Config(), state))
    _, states = await asyncio.to_thread(
        lambda: (sink.on_train_begin(), train(sink, state, range(2)))
    )
    sink.on_train_end()
    await sink.aclose()
    for rel, size in states[1]["files"].items():
        data = (log_dir / rel).read_bytes()[:size]
        assert states[1]["digests"][rel] == hashlib.sha256(data).hexdigest()
