"""What a coordinator callback may offer beyond the Keras hooks is found by its structure
(`distcb.callbacks.extension`): distcb's own sinks match the protocols, and a user's plain
keras.callbacks.Callback subclass runs with none, some or all of them."""

from __future__ import annotations

from typing import Any

import pytest

from distcb.callbacks import CSVLogger, EarlyStopping, History, RemoteMonitor, TensorBoard
from distcb.callbacks.callback_list import CallbackList
from distcb.callbacks.extension import (
    AsksWorkers,
    AsyncClosable,
    HasStatistics,
    NeedsRuntime,
    Sink,
    Stateful,
    Syncable,
    may_decide_on_batch,
    observes_only,
)
from distcb.coordinator.resume import callback_states, restore_callbacks
from distcb.protocol.worker_data import HistogramRequest, ModelJsonRequest, ProfileRequest
from distcb.testing import simulate

PARAMS = {"learning_rate": 0.01, "directions": {"loss": "min"}}
PROTOCOLS = (AsksWorkers, AsyncClosable, HasStatistics, NeedsRuntime, Stateful, Syncable)


def test_distcb_sinks_are_sinks(tmp_path: Any) -> None:
    sinks = [
        TensorBoard(tmp_path / "tb"),
        CSVLogger(str(tmp_path / "log.csv")),
        RemoteMonitor(root="http://127.0.0.1:1"),
    ]
    for sink in sinks:
        assert isinstance(sink, Sink), type(sink).__name__
        assert observes_only(sink)
        assert not may_decide_on_batch(sink)
    assert all(isinstance(s, Stateful) and isinstance(s, Syncable) for s in sinks[:2])
    assert isinstance(EarlyStopping(), Stateful)
    assert not isinstance(EarlyStopping(), Sink)
    assert not isinstance(History(), NeedsRuntime)


def test_a_keras_callback_with_none_of_the_extension_points_runs(keras: Any) -> None:
    class Epochs(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[int] = []

        def on_epoch_end(self, epoch, logs=None):
            self.seen.append(epoch)

    epochs = Epochs()
    assert not any(isinstance(epochs, protocol) for protocol in PROTOCOLS)
    assert not observes_only(epochs)
    assert may_decide_on_batch(epochs)  # it does not say: it may
    result = simulate([epochs], [[{"loss": 1.0}, {"loss": 2.0}]] * 3, params=PARAMS)
    assert epochs.seen == [0, 1, 2]
    assert result.coordinator.status()["sinks"] == {}
    assert callback_states([epochs]) == [None]
    assert result.workers[0].start is not None
    assert result.workers[0].start.worker_requests == ()


def test_a_keras_callback_offers_what_it_defines(keras: Any) -> None:
    """Statistics on /status, its state journaled and restored, its own worker request,
    its batch hooks declared observing: without subclassing anything of distcb's."""

    class Counter(keras.callbacks.Callback):
        decides_on_batch = False

        def __init__(self) -> None:
            super().__init__()
            self.epochs = 0
            self.synced = 0

        def on_epoch_end(self, epoch, logs=None):
            self.epochs += 1

        def on_train_batch_end(self, batch, logs=None):
            pass

        def statistics(self) -> dict[str, int]:
            return {"epochs": self.epochs}

        def get_state(self) -> dict[str, int]:
            return {"epochs": self.epochs}

        def set_state(self, state: dict[str, int]) -> None:
            self.epochs = state["epochs"]

        def sync(self) -> None:
            self.synced += 1

        def worker_requests(self) -> tuple[HistogramRequest, ...]:
            return (HistogramRequest(every_epochs=3),)

    counter = Counter()
    assert not CallbackList([counter]).decides_on_batch
    result = simulate([counter], [[{"loss": 1.0}, {"loss": 2.0}]] * 2, params=PARAMS)
    assert result.coordinator.status()["sinks"] == {"Counter": {"epochs": 2}}
    start = result.workers[0].start
    assert start is not None
    assert start.worker_requests == (HistogramRequest(every_epochs=3),)

    assert callback_states([counter]) == [{"epochs": 2}]
    assert counter.synced == 1  # synced before its state was read
    restore_callbacks([counter], [{"epochs": 7}])
    assert counter.epochs == 7


def test_worker_requests_come_from_the_callbacks_each_once(tmp_path: Any) -> None:
    first = TensorBoard(tmp_path / "a", histogram_freq=2, write_images=True, profile_batch=(3, 4))
    second = TensorBoard(tmp_path / "b", histogram_freq=2, write_images=True, write_graph=False)
    result = simulate(
        [first, second, TensorBoard(tmp_path / "c", write_graph=False)],
        [[{"loss": 1.0}, {"loss": 2.0}]],
        params=PARAMS,
    )
    start = result.workers[1].start
    assert start is not None
    assert start.worker_requests == (
        HistogramRequest(every_epochs=2, images=True),
        ModelJsonRequest(),
        ProfileRequest(first_batch=3, last_batch=4),
    )


@pytest.mark.parametrize("stateful", [True, False])
def test_only_stateful_callbacks_are_restored(keras: Any, stateful: bool) -> None:
    class Partial(keras.callbacks.Callback):
        restored: dict[str, int] | None = None

        def get_state(self) -> dict[str, int]:
            return {"n": 1}

    if stateful:
        Partial.set_state = lambda self, state: setattr(self, "restored", state)  # type: ignore[attr-defined]
    callback = Partial()
    assert isinstance(callback, Stateful) is stateful  # get_state alone is not a state
    restore_callbacks([callback], [{"n": 5}])
    assert callback.restored == ({"n": 5} if stateful else None)
