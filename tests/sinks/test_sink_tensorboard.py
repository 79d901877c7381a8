"""TensorBoard event files read back with EventAccumulator, compared with Keras 3's own."""

import asyncio
import math
import re

import msgspec
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distcb.callbacks.tensorboard import TensorBoard
from distcb.coordinator.aggregate import Spread
from distcb.coordinator.runtime import JobState, Runtime
from distcb.protocol.config import Config
from distcb.protocol.histograms import weight_histograms
from distcb.protocol.worker_data import NO_EXTRAS, EpochExtras, HistogramRequest

EPOCHS = 3
STEPS = 4


def epoch_logs(epoch: int, with_val: bool = True) -> dict:
    logs = {"loss": 1.0 / (epoch + 1), "mae": np.float32(0.5 - epoch / 10)}
    if with_val:
        logs |= {"val_loss": 1.5 / (epoch + 1), "val_mae": 0.6}
    return logs


def batch_logs(epoch: int, step: int) -> dict:
    return {"loss": 2.0 / (epoch * STEPS + step + 1), "mae": np.float64(0.1 * step)}


def drive(callback, model, with_val: bool = True, batches: bool = True) -> None:
    callback.set_model(model)
    callback.on_train_begin()
    for epoch in range(EPOCHS):
        callback.on_epoch_begin(epoch)
        for step in range(STEPS if batches else 0):
            callback.on_train_batch_begin(step)
            callback.on_train_batch_end(step, batch_logs(epoch, step))
        callback.on_epoch_end(epoch, epoch_logs(epoch, with_val))
    callback.on_train_end()


def read(run_dir) -> EventAccumulator:
    accumulator = EventAccumulator(
        str(run_dir), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0}
    )
    accumulator.Reload()
    return accumulator


def keras_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Keras 3 writes scalars as tensor summaries."""
    acc = read(run_dir)
    return {
        tag: [
            (
                e.step,
                float(np.frombuffer(e.tensor_proto.tensor_content, np.float32)[0])
                if e.tensor_proto.tensor_content
                else e.tensor_proto.float_val[0],
            )
            for e in acc.Tensors(tag)
        ]
        for tag in acc.Tags()["tensors"]
    }


def our_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = read(run_dir)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_same_series(ours, theirs) -> None:
    assert sorted(ours) == sorted(theirs)
    for tag, series in theirs.items():
        assert [s for s, _ in ours[tag]] == [s for s, _ in series], tag
        assert [v for _, v in ours[tag]] == pytest.approx([v for _, v in series], rel=1e-6), tag


# Keras's own TensorBoard converts values with a numpy 2 deprecation warning; not ours.
KERAS_NUMPY_WARNING = "ignore:__array__ implementation:DeprecationWarning"


@pytest.mark.filterwarnings(KERAS_NUMPY_WARNING)
@pytest.mark.parametrize("update_freq", ["epoch", "batch", 3])
@pytest.mark.parametrize("with_runtime", [False, True])
async def test_tags_and_steps_match_keras(tmp_path, keras_model, update_freq, with_runtime):
    import keras

    theirs = keras.callbacks.TensorBoard(
        tmp_path / "keras", update_freq=update_freq, write_graph=False, histogram_freq=0
    )
    await asyncio.to_thread(drive, theirs, keras_model)
    ours = TensorBoard(tmp_path / "ours", update_freq=update_freq, write_graph=False)
    if with_runtime:
        ours.set_runtime(Runtime(asyncio.get_running_loop(), Config(), JobState(num_workers=1)))
    await asyncio.to_thread(drive, ours, keras_model)
    await ours.aclose()

    for run in ("train", "validation"):
        expected = keras_scalars(tmp_path / "keras" / run)
        ours_series = our_scalars(tmp_path / "ours" / run)
        if isinstance(update_freq, int):
            # Keras bug not copied: with update_freq=N its record_if(step % N == 0) also
            # filters the epoch summaries, so an epoch is written only when its last global
            # step is a multiple of N. Batch series must match; epochs are all written here.
            recorded = [e for e in range(EPOCHS) if (e + 1) * STEPS % update_freq == 0]
            assert [s for s, _ in expected["epoch_loss"]] == recorded  # the Keras bug
            expected = {t: v for t, v in expected.items() if t.startswith("batch_")}
            epochs = {t: v for t, v in ours_series.items() if t.startswith("epoch_")}
            assert all([s for s, _ in v] == list(range(EPOCHS)) for v in epochs.values())
            ours_series = {t: v for t, v in ours_series.items() if t.startswith("batch_")}
        assert_same_series(ours_series, expected)
    train = our_scalars(tmp_path / "ours" / "train")
    assert [s for s, _ in train["epoch_loss"]] == list(range(EPOCHS))
    assert train["epoch_learning_rate"][0][1] == pytest.approx(0.05)  # from the model's optimizer
    if update_freq == "batch":
        assert [s for s, _ in train["batch_loss"]] == list(range(1, EPOCHS * STEPS + 1))


def test_learning_rate_comes_from_the_logs_first(tmp_path):
    tensorboard = TensorBoard(tmp_path)
    tensorboard.on_train_begin()
    tensorboard.on_epoch_end(0, {"loss": 1.0, "learning_rate": 0.125, "note": "text is skipped"})
    tensorboard.on_train_end()
    train = our_scalars(tmp_path / "train")
    assert train == {"epoch_loss": [(0, 1.0)], "epoch_learning_rate": [(0, 0.125)]}
    assert not (tmp_path / "validation").exists()  # no val_ logs, no validation run


@pytest.mark.filterwarnings(KERAS_NUMPY_WARNING)
async def test_histograms_come_from_the_chief_extras(tmp_path, keras_model):
    import keras

    theirs = keras.callbacks.TensorBoard(tmp_path / "keras", histogram_freq=2, write_graph=False)
    await asyncio.to_thread(drive, theirs, keras_model, True, False)
    keras_histograms = sorted(
        t for t in read(tmp_path / "keras" / "train").Tags()["tensors"] if t.endswith("/histogram")
    )

    state = JobState(num_workers=2)
    ours = TensorBoard(tmp_path / "ours", histogram_freq=2, write_graph=False)
    ours.set_runtime(Runtime(asyncio.get_running_loop(), Config(), state))
    weights = {w.path: np.asarray(w) for layer in keras_model.layers for w in layer.weights}

    (request,) = ours.worker_requests()  # what the coordinator asks of the chief
    assert request == HistogramRequest(every_epochs=2)

    def run() -> None:
        ours.set_model(None)
        ours.on_train_begin()
        for epoch in range(EPOCHS):
            extras = EpochExtras(histograms=weight_histograms(weights))
            wire = msgspec.msgpack.decode(msgspec.msgpack.encode(extras), type=EpochExtras)
            state.epoch_extras = {0: wire if request.due(epoch) else NO_EXTRAS, 1: NO_EXTRAS}
            ours.on_epoch_end(epoch, epoch_logs(epoch))
        ours.on_train_end()

    await asyncio.to_thread(run)
    await ours.aclose()
    acc = read(tmp_path / "ours" / "train")
    assert sorted(acc.Tags()["histograms"]) == keras_histograms
    kernel = keras_model.layers[0].kernel.path  # layer names depend on earlier models
    events = acc.Histograms(f"{kernel}/histogram")
    assert [e.step for e in events] == [0, 2]
    values = weights[kernel]
    assert events[0].histogram_value.num == values.size
    assert events[0].histogram_value.min == pytest.approx(values.min())
    assert events[0].histogram_value.max == pytest.approx(values.max())

    # Driven directly with a real Keras model (no coordinator), from the model's weights.
    direct = TensorBoard(tmp_path / "direct", histogram_freq=2, write_graph=False)
    await asyncio.to_thread(drive, direct, keras_model, True, False)
    assert sorted(read(tmp_path / "direct" / "train").Tags()["histograms"]) == keras_histograms


def test_steps_per_second_tags(tmp_path, keras_model):
    tensorboard = TensorBoard(tmp_path, update_freq="batch", write_steps_per_second=True)
    drive(tensorboard, keras_model)
    train = our_scalars(tmp_path / "train")
    assert [s for s, _ in train["epoch_steps_per_second"]] == list(range(EPOCHS))
    assert [s for s, _ in train["batch_steps_per_second"]] == list(range(1, EPOCHS * STEPS + 1))
    assert all(v > 0 for _, v in train["epoch_steps_per_second"] + train["batch_steps_per_second"])


async def test_spread_tags_come_from_the_job_state(tmp_path):
    state = JobState(num_workers=2)
    ours = TensorBoard(tmp_path, update_freq="batch")
    ours.set_runtime(Runtime(asyncio.get_running_loop(), Config(), state))

    def run() -> None:
        ours.on_train_begin()
        state.batch_spread = {"loss": Spread(0.5, 1.5, 1, 0)}
        ours.on_train_batch_begin(0)
        ours.on_train_batch_end(0, {"loss": 1.0})
        state.epoch_spread = {"loss": Spread(1.0, 3.0, 0, 1), "val_loss": Spread(2.0, 4.0, 1, 0)}
        ours.on_epoch_end(0, {"loss": 2.0, "val_loss": 3.0})
        ours.on_train_end()

    await asyncio.to_thread(run)
    await ours.aclose()
    train = our_scalars(tmp_path / "train")
    assert train["spread/epoch_loss_min"] == [(0, 1.0)]
    assert train["spread/epoch_loss_max"] == [(0, 3.0)]
    assert train["spread/batch_loss_min"] == [(1, 0.5)]
    assert train["spread/batch_loss_max"] == [(1, 1.5)]
    validation = our_scalars(tmp_path / "validation")
    assert validation["spread/epoch_loss_min"] == [(0, 2.0)]
    assert validation["spread/epoch_loss_max"] == [(0, 4.0)]
    assert validation["epoch_loss"] == [(0, 3.0)]


@pytest.mark.filterwarnings(KERAS_NUMPY_WARNING)
async def test_write_graph_writes_the_keras_conceptual_graph(tmp_path, keras_model):
    import keras

    theirs = keras.callbacks.TensorBoard(tmp_path / "keras", write_graph=True)
    await asyncio.to_thread(drive, theirs, keras_model, True, False)
    theirs_acc = read(tmp_path / "keras" / "train")

    state = JobState(num_workers=1)
    ours = TensorBoard(tmp_path / "ours", write_graph=True)
    ours.set_runtime(Runtime(asyncio.get_running_loop(), Config(), state))
    ours.on_train_begin()  # the proxy model has no to_json: the chief's JSON is used
    state.epoch_extras = {0: EpochExtras(model_json=keras_model.to_json())}
    ours.on_epoch_end(0, {"loss": 1.0})
    ours.on_epoch_end(1, {"loss": 0.5})
    ours.on_train_end()
    await ours.aclose()
    acc = read(tmp_path / "ours" / "train")

    (event,) = acc.Tensors("keras")
    assert event.step == 0
    assert event.tensor_proto.string_val[0].decode() == keras_model.to_json()
    assert acc.SummaryMetadata("keras").plugin_data.plugin_name == (
        theirs_acc.SummaryMetadata("keras").plugin_data.plugin_name
    )
    assert acc.SummaryMetadata("keras").plugin_data.content == b"1"


def test_keras_2_and_ineffective_arguments_warn_bad_ones_raise(tmp_path):
    with pytest.warns(UserWarning, match=r"\['batch_size', 'write_grads'\] are Keras 2 arguments"):
        TensorBoard(tmp_path, batch_size=32, write_grads=True)
    with pytest.warns(UserWarning, match="with histogram_freq=0 no image is written"):
        TensorBoard(tmp_path, write_images=True)
    with pytest.raises(ValueError, match='update_freq must be "epoch", "batch" or an integer'):
        TensorBoard(tmp_path, update_freq="samples")
    for profile_batch in (-1, (3, 2), "1,x", (0, 2), 1.5):
        with pytest.raises(ValueError, match=f"Received: {re.escape(repr(profile_batch))}"):
            TensorBoard(tmp_path, profile_batch=profile_batch)
    assert TensorBoard(tmp_path, profile_batch="2,4").profile_batches == (2, 4)
    assert TensorBoard(tmp_path, profile_batch=[3, 3]).profile_batches == (3, 3)
    with pytest.raises(ValueError, match="embeddings_freq must be an integer >= 0, received -1"):
        TensorBoard(tmp_path, embeddings_freq=-1)
    assert TensorBoard(tmp_path, histogram_freq=3).histogram_freq == 3


def test_non_finite_values_are_written(tmp_path):
    tensorboard = TensorBoard(tmp_path)
    tensorboard.on_train_begin()
    tensorboard.on_epoch_end(0, {"loss": math.nan})
    tensorboard.on_train_end()
    ((step, value),) = our_scalars(tmp_path / "train")["epoch_loss"]
    assert step == 0
    assert math.isnan(value)
