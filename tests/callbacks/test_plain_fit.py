"""distcb's callbacks passed straight to a single-process `model.fit`: the same results as
Keras's own callbacks, fit for fit, in Keras 3 and in tf_keras (whose wheel ships no callback
tests of its own; tests/keras_peer runs Keras 3's)."""

from __future__ import annotations

import asyncio
import csv
import importlib
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

import distcb.callbacks as ours

pytestmark = pytest.mark.slow  # real Keras fits

EPOCHS = 6


def data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, :1] - 0.5 * x[:, 1:2] > 0).astype("float32")
    return x, y


def fit(flavour: str, callbacks: list[Any], epochs: int = EPOCHS, **compile_args: Any) -> Any:
    """A seeded model of `flavour` ("keras" or "tf_keras") fit with `callbacks` (with
    `epochs=0`, only built); the model."""
    keras = importlib.import_module(flavour)
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(1, activation="sigmoid", name="out"),
        ]
    )
    model.compile(
        optimizer=compile_args.pop("optimizer", keras.optimizers.SGD(0.5)),
        loss="binary_crossentropy",
        metrics=["accuracy"],
        **compile_args,
    )
    x, y = data()
    vx, vy = data(1)
    if epochs:
        model.fit(
            x,
            y,
            validation_data=(vx, vy),
            epochs=epochs,
            batch_size=16,
            verbose=0,
            callbacks=callbacks,
        )
    return model


def learning_rate(model: Any) -> float:
    return float(np.asarray(model.optimizer.learning_rate))


def keras3_names(history: dict[str, Any]) -> dict[str, Any]:
    """tf_keras's callbacks log the learning rate as `lr`; distcb's use Keras 3's name."""
    return {("learning_rate" if k == "lr" else k): v for k, v in history.items()}


def same_run(theirs: Any, mine: Any) -> None:
    """Two fits ended alike: same epochs, logs, learning rate and weights."""
    assert mine.history.epoch == theirs.history.epoch
    expected = keras3_names(theirs.history.history)
    assert sorted(mine.history.history) == sorted(expected)
    for key, values in expected.items():
        assert mine.history.history[key] == pytest.approx(values, rel=1e-6), key
    assert learning_rate(mine) == pytest.approx(learning_rate(theirs), rel=1e-6)
    for a, b in zip(theirs.get_weights(), mine.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6)


# Each case builds the same callback from Keras's module and from distcb's.
DECIDING: dict[str, Callable[[Any], Any]] = {
    "early_stopping_restore": lambda m: m.EarlyStopping(
        monitor="val_loss", patience=1, min_delta=0.05, restore_best_weights=True
    ),
    "early_stopping_accuracy": lambda m: m.EarlyStopping(monitor="val_accuracy", patience=1),
    "reduce_lr": lambda m: m.ReduceLROnPlateau(
        monitor="val_loss", factor=0.5, patience=0, min_delta=0.05, cooldown=1
    ),
    "scheduler": lambda m: m.LearningRateScheduler(lambda epoch, lr: lr * 0.7),
}


@pytest.mark.parametrize("flavour", ["keras", "tf_keras"])
@pytest.mark.parametrize("case", sorted(DECIDING))
def test_deciding_callbacks_end_the_fit_as_keras_does(flavour: str, case: str) -> None:
    keras = importlib.import_module(flavour)
    theirs = fit(flavour, [DECIDING[case](keras.callbacks)])
    mine = fit(flavour, [DECIDING[case](ours)])
    same_run(theirs, mine)


def test_early_stopping_and_lr_changes_are_not_vacuous() -> None:
    """The cases above stop early and change the learning rate (else they could not fail)."""
    keras = importlib.import_module("keras")
    stopped = fit("keras", [DECIDING["early_stopping_restore"](keras.callbacks)])
    assert len(stopped.history.epoch) < EPOCHS
    reduced = fit("keras", [DECIDING["reduce_lr"](keras.callbacks)])
    assert learning_rate(reduced) < 0.5


@pytest.mark.parametrize("flavour", ["keras", "tf_keras"])
def test_csv_logger_and_model_checkpoint_write_the_same_files(flavour: str, tmp_path: Path) -> None:
    keras = importlib.import_module(flavour)
    files = {}
    for name, module in (("theirs", keras.callbacks), ("ours", ours)):
        folder = tmp_path / name
        folder.mkdir()
        checkpoint = module.ModelCheckpoint(
            str(folder / "best.weights.h5"),
            monitor="val_loss",
            save_best_only=True,
            save_weights_only=True,
        )
        fit(flavour, [module.CSVLogger(str(folder / "log.csv")), checkpoint])
        files[name] = folder
    with open(files["theirs"] / "log.csv") as a, open(files["ours"] / "log.csv") as b:
        theirs, mine = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert [sorted(r) for r in mine] == [sorted(r) for r in theirs]
    for row_a, row_b in zip(theirs, mine, strict=True):
        assert {k: float(v) for k, v in row_b.items()} == pytest.approx(
            {k: float(v) for k, v in row_a.items()}, rel=1e-6
        )
    best = {}
    for name, folder in files.items():
        model = fit(flavour, [], epochs=0)
        model.load_weights(str(folder / "best.weights.h5"))
        best[name] = model.get_weights()
    for a, b in zip(best["theirs"], best["ours"], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6)


HOOKS = [f"on_{w}_batch_{e}" for w in ("train", "test", "predict") for e in ("begin", "end")]
HOOKS += ["on_batch_begin", "on_batch_end", "on_epoch_begin", "on_epoch_end"]


@pytest.mark.parametrize("flavour", ["keras", "tf_keras"])
def test_batch_hooks_are_dispatched_as_for_keras_callbacks(flavour: str, tmp_path: Path) -> None:
    """Keras 3 runs batch hooks off the training thread (JAX, torch backends) unless a callback
    overrides one, which it reads from the hooks' `_is_default` mark; tf_keras skips the batch
    hooks no callback implements. distcb's callbacks answer as Keras's own."""
    keras = importlib.import_module(flavour)
    model = fit(flavour, [], epochs=0)
    makers = [
        lambda m: m.EarlyStopping(),
        lambda m: m.TerminateOnNaN(),
        lambda m: m.CSVLogger(str(tmp_path / "log.csv")),
        lambda m: m.TensorBoard(str(tmp_path / m.__name__)),
        lambda m: m.LambdaCallback(on_epoch_end=print),
        lambda m: m.LambdaCallback(on_train_batch_end=print, on_test_batch_begin=print),
        lambda m: m.LambdaCallback(on_predict_batch_end=print),
    ]
    for make in makers:
        theirs, mine = make(keras.callbacks), make(ours)
        if flavour == "keras":
            from keras.src.utils.python_utils import is_default

            assert [is_default(getattr(mine, h)) for h in HOOKS] == [
                is_default(getattr(theirs, h)) for h in HOOKS
            ], type(mine).__name__
        else:
            lists = [keras.callbacks.CallbackList([cb], model=model) for cb in (theirs, mine)]
            answers = [
                [getattr(c, f"_should_call_{w}_batch_hooks") for w in ("train", "test", "predict")]
                for c in lists
            ]
            assert answers[1] == answers[0], type(mine).__name__
    if flavour == "tf_keras":  # distcb writes batch scalars from its hooks (tf_keras, none)
        batches = ours.TensorBoard(str(tmp_path / "batches"), update_freq="batch")
        assert keras.callbacks.CallbackList([batches])._should_call_train_batch_hooks


def test_multi_optimizer_learning_rates_follow_keras() -> None:
    keras = importlib.import_module("keras")

    def multi() -> Any:
        def select(variable: Any) -> Any:
            return first if "/hidden/" in variable.path else second

        first = keras.optimizers.SGD(0.5, name="first")
        second = keras.optimizers.SGD(0.2, name="second")
        return keras.optimizers.MultiOptimizer(select)

    runs = []
    for module in (keras.callbacks, ours):
        callbacks = [
            module.LearningRateScheduler(lambda epoch, lr: lr * 0.9),
            module.ReduceLROnPlateau(monitor="val_loss", patience=0, min_delta=0.05),
        ]
        runs.append(fit("keras", callbacks, epochs=3, optimizer=multi()))
    theirs, mine = runs
    assert [k for k in theirs.history.history if k.startswith("learning_rate_")]
    assert mine.history.history.keys() == theirs.history.history.keys()
    for key, values in theirs.history.history.items():
        assert mine.history.history[key] == pytest.approx(values, rel=1e-6), key


# ---------------------------------------------------------------------- TensorBoard


def read_events(run_dir: Path) -> dict[str, list[tuple[int, Any]]]:
    """tag -> [(step, value)] of every summary in a run: scalars as floats, tensors as protos."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    out: dict[str, list[tuple[int, Any]]] = {}
    for tag in acc.Tags()["scalars"]:
        out[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    for tag in acc.Tags()["tensors"]:
        events = acc.Tensors(tag)
        if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars":  # Keras's own scalars
            import tensorflow as tf

            out[tag] = [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in events]
        else:
            out[tag] = [(e.step, e.tensor_proto) for e in events]
    return out


def embedding_fit(callbacks: list[Any], epochs: int = 2) -> Any:
    import keras

    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((4,), dtype="int32"),
            keras.layers.Embedding(10, 3, name="tokens"),
            keras.layers.Conv1D(3, 2, name="conv"),
            keras.layers.Flatten(),
            keras.layers.Dense(1, name="out"),
        ]
    )
    model.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 10, size=(16, 4)), rng.normal(size=(16, 1))
    model.fit(
        x, y, validation_data=(x, y), epochs=epochs, batch_size=4, verbose=0, callbacks=callbacks
    )
    return model


def test_tensorboard_writes_what_keras_writes_from_the_same_fit(tmp_path: Path) -> None:
    import keras
    import tensorflow as tf

    options = {
        "histogram_freq": 1,
        "write_images": True,
        "write_graph": False,
        "embeddings_freq": 1,
    }
    # Keras pops the layers it finds from embeddings_metadata: each gets a dict of its own.
    # Keras fails to write its projector config into a log_dir that does not exist yet
    # (unless write_graph made it): not copied, but it needs the folder here.
    (tmp_path / "theirs").mkdir()
    theirs = keras.callbacks.TensorBoard(
        str(tmp_path / "theirs"), embeddings_metadata={"tokens": "words.tsv"}, **options
    )
    mine = ours.TensorBoard(
        str(tmp_path / "ours"), embeddings_metadata={"tokens": "words.tsv"}, **options
    )
    model = embedding_fit([theirs, mine])  # both see the same weights at every epoch
    projector_configs = [
        (tmp_path / who / "projector_config.pbtxt").read_text() for who in ("theirs", "ours")
    ]
    assert projector_configs[1] == projector_configs[0]
    assert 'metadata_path: "words.tsv"' in projector_configs[1]
    x = np.ones((4, 4), "int32")
    model.evaluate(x, np.zeros((4, 1)), callbacks=[theirs, mine], verbose=0)

    for run in ("train", "validation"):
        expected, got = read_events(tmp_path / "theirs" / run), read_events(tmp_path / "ours" / run)
        images = sorted(t for t in expected if t.endswith("/image"))
        assert bool(images) == (run == "train")
        assert sorted(t for t in got if t.endswith("/image")) == images
        for tag in images:
            for (step_a, a), (step_b, b) in zip(expected[tag], got[tag], strict=True):
                assert step_a == step_b
                assert a.string_val[:2] == b.string_val[:2]  # width, height
                pixels = [
                    [tf.io.decode_png(png).numpy() for png in proto.string_val[2:]]
                    for proto in (a, b)
                ]
                np.testing.assert_array_equal(pixels[1], pixels[0])
        scalars = {t for t, v in expected.items() if isinstance(v[0][1], float)}
        assert scalars <= set(got)
        for tag in scalars:
            assert [s for s, _ in got[tag]] == [s for s, _ in expected[tag]], (run, tag)
            assert [v for _, v in got[tag]] == pytest.approx([v for _, v in expected[tag]]), tag
        histograms = {t for t in expected if t.endswith("/histogram")}
        assert histograms == {t for t in read_histogram_tags(tmp_path / "ours" / run)}
    assert "evaluation_loss_vs_iterations" in scalars  # validation in fit, then evaluate()

    for epoch in range(2):
        name = f"keras_embedding.ckpt-{epoch}.weights.h5"
        saved = []
        for who in ("theirs", "ours"):
            model.load_weights(str(tmp_path / who / "train" / name))
            saved.append(model.get_weights())
        for a, b in zip(*saved, strict=True):
            np.testing.assert_array_equal(b, a)


def read_histogram_tags(run_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"histograms": 0}).Reload()
    return list(acc.Tags()["histograms"])


@pytest.mark.parametrize("module_name", ["keras", "distcb"])
def test_profile_batch_traces_the_same_batches(module_name: str, tmp_path: Path) -> None:
    """Keras's profile and ours, each in its own fit (TensorFlow has one profiler)."""
    import keras

    module = keras.callbacks if module_name == "keras" else ours
    callback = module.TensorBoard(str(tmp_path), profile_batch=(2, 3), write_graph=False)
    embedding_fit([callback])
    train = read_events(tmp_path / "train")
    (graph,) = train["batch_3"]
    assert graph[0] == 3
    assert len(list((tmp_path / "train" / "plugins" / "profile").glob("*/*.xplane.pb"))) == 1


# ---------------------------------------------------------------------- RemoteMonitor


@pytest.fixture
def posts_server() -> Iterator[tuple[str, list[bytes]]]:
    """An aiohttp server on its own thread: the fit below blocks the test's thread."""
    received: list[bytes] = []
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(text="ok")

    async def start() -> None:
        app = web.Application()
        app.router.add_post("/publish/epoch/end/", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        state["runner"] = runner
        state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()))
    thread.start()
    assert ready.wait(10)
    yield state["url"], received
    asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_remote_monitor_posts_what_keras_posts(posts_server: tuple[str, list[bytes]]) -> None:
    """Keras's RemoteMonitorWithJsonPayload test, against a real server instead of a mock."""
    import keras

    url, received = posts_server
    model = fit(
        "keras",
        [
            keras.callbacks.RemoteMonitor(root=url, send_as_json=True),
            ours.RemoteMonitor(root=url, send_as_json=True),
        ],
        epochs=2,
    )
    # Keras posts synchronously in its hook, then distcb's post of the same epoch follows;
    # on_train_end waited for distcb's last one.
    assert len(received) == 4
    bodies = [json.loads(body) for body in received]
    assert bodies[0::2] == bodies[1::2]
    assert [b["epoch"] for b in bodies[1::2]] == [0, 1]
    assert [b["val_loss"] for b in bodies[1::2]] == pytest.approx(model.history.history["val_loss"])


def test_keras_adds_its_own_progress_bar_next_to_distcb_s() -> None:
    """A limitation docs/keras-parity.md states: Keras recognises only its own ProgbarLogger."""
    keras = importlib.import_module("keras")
    callbacks = keras.callbacks.CallbackList([ours.ProgbarLogger()], add_progbar=True)
    assert [type(c).__module__.split(".")[0] for c in callbacks.callbacks] == ["distcb", "keras"]
    callbacks = keras.callbacks.CallbackList([keras.callbacks.ProgbarLogger()], add_progbar=True)
    assert len(callbacks.callbacks) == 1


def test_evaluate_right_after_fit_keeps_what_fit_wrote(tmp_path: Path, monkeypatch) -> None:
    """tensorboardX names an event file by the second and the host and opens it with "wb".
    evaluate()'s writer for the validation run, opened in the same second as fit's (seen in
    CI), truncated fit's epoch scalars. The clock of the file names is held still here, so
    every writer falls in the same second."""
    import keras
    from tensorboardX import event_file_writer

    class StillClock:
        @staticmethod
        def time() -> float:
            return 1_700_000_000.0

    monkeypatch.setattr(event_file_writer, "time", StillClock)
    x, y = data()
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    board = ours.TensorBoard(str(tmp_path))
    model.fit(x, y, validation_data=(x, y), epochs=3, verbose=0, callbacks=[board])
    model.evaluate(x, y, verbose=0, callbacks=[board])
    validation = read_events(tmp_path / "validation")
    assert [step for step, _ in validation["epoch_loss"]] == [0, 1, 2]
    assert "evaluation_loss_vs_iterations" in validation
