"""The sinks on a real Coordinator fed by scripted workers (distcb.testing)."""

import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distcb.callbacks.csv_logger import CSVLogger
from distcb.callbacks.remote_monitor import RemoteMonitor, RemoteMonitorStatistics
from distcb.callbacks.tensorboard import TensorBoard
from distcb.protocol.config import Config
from distcb.testing import asimulate
from tests.helpers.sinks import never_answer

CONFIG = Config(heartbeat_interval_s=0.05, heartbeat_timeout_s=5.0, sink_close_timeout_s=1.0)
EPOCHS = 20


def two_workers(epochs: int) -> list[list[dict]]:
    return [
        [
            {"loss": 1.0 / (e + 1), "val_loss": 2.0 / (e + 1)},
            {"loss": 3.0 / (e + 1), "val_loss": 4.0 / (e + 1)},
        ]
        for e in range(epochs)
    ]


async def test_never_answering_server_does_not_delay_the_run(http_server):
    server = await http_server(never_answer)
    monitor = RemoteMonitor(root=server.url, timeout_s=30.0)
    start = time.monotonic()
    result = await asimulate([monitor], two_workers(EPOCHS), config=CONFIG)
    elapsed = time.monotonic() - start

    assert result.history.epoch == list(range(EPOCHS))
    # One post would hang for timeout_s = 30 s; the whole run, close deadline included,
    # takes about Config.sink_close_timeout_s. A generous bound:
    assert elapsed < 10.0
    assert len(server.requests) == 1  # the first post went out and is still held
    assert monitor.statistics() == RemoteMonitorStatistics(
        sent=0, dropped=0, failed=EPOCHS, retried=0, queued=0, in_flight=0
    )


async def test_tensorboard_spread_for_two_workers(tmp_path):
    steps = 3
    batch_logs = [[[{"loss": 1.0 + s}, {"loss": 2.0 + s}] for s in range(steps)] for _ in range(2)]
    tensorboard = TensorBoard(tmp_path, update_freq="batch")
    await asimulate(
        [tensorboard],
        two_workers(2),
        batch_logs,
        params={"learning_rate": 0.01},
        config=CONFIG,
    )

    def scalars(run: str) -> dict[str, list[tuple[int, float]]]:
        acc = EventAccumulator(str(tmp_path / run), size_guidance={"scalars": 0})
        acc.Reload()
        return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}

    train, validation = scalars("train"), scalars("validation")
    assert train["epoch_loss"] == [(0, 2.0), (1, 1.0)]  # equal-weight mean of 1 and 3
    assert train["spread/epoch_loss_min"] == [(0, 1.0), (1, 0.5)]
    assert train["spread/epoch_loss_max"] == [(0, 3.0), (1, 1.5)]
    assert validation["spread/epoch_loss_min"] == [(0, 2.0), (1, 1.0)]
    assert validation["spread/epoch_loss_max"] == [(0, 4.0), (1, 2.0)]
    assert train["epoch_learning_rate"] == [(0, pytest.approx(0.01)), (1, pytest.approx(0.01))]
    assert [s for s, _ in train["batch_loss"]] == list(range(1, 2 * steps + 1))
    assert train["spread/batch_loss_min"][0] == (1, 1.0)
    assert train["spread/batch_loss_max"][0] == (1, 2.0)


async def test_csv_logger_on_the_coordinator_matches_keras(tmp_path, keras_model):
    import keras

    ours = CSVLogger(tmp_path / "ours.csv")
    result = await asimulate([ours], two_workers(3), config=CONFIG)
    theirs = keras.callbacks.CSVLogger(str(tmp_path / "keras.csv"))
    theirs.set_model(keras_model)
    theirs.on_train_begin()
    for epoch in result.history.epoch:
        theirs.on_epoch_end(epoch, {k: v[epoch] for k, v in result.history.history.items()})
    theirs.on_train_end()
    assert (tmp_path / "ours.csv").read_bytes() == (tmp_path / "keras.csv").read_bytes()
