"""Output sinks fed by real Keras workers: CSV, TensorBoard (with the chief's weight
histograms and model graph) and RemoteMonitor posts, all written by the coordinator."""

from __future__ import annotations

import asyncio
import csv
import json
import threading

import pytest
from aiohttp import web

import distcb
from distcb.callbacks import CSVLogger, RemoteMonitor, TensorBoard
from tests.helpers.worker_fns import tiny_keras3

pytestmark = pytest.mark.slow


@pytest.fixture
def posts_server():
    """An aiohttp server in its own thread (distcb.run owns the test's thread)."""
    received: list[dict] = []
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict = {}

    async def handle(request: web.Request) -> web.Response:
        form = await request.post()
        received.append(json.loads(form["data"]))
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


def test_sinks_record_what_the_real_workers_trained(tmp_path, posts_server):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    url, received = posts_server
    csv_path = tmp_path / "log.csv"
    logdir = tmp_path / "tb"
    history = distcb.run(
        tiny_keras3,
        num_workers=2,
        kwargs={"epochs": 3},
        run_dir=str(tmp_path),
        callbacks=[
            CSVLogger(str(csv_path)),
            TensorBoard(log_dir=str(logdir), histogram_freq=1, write_graph=True),
            RemoteMonitor(root=url),
        ],
    )
    with open(csv_path) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [float(r["loss"]) for r in rows] == pytest.approx(history.history["loss"])
    assert [p["epoch"] for p in received] == [0, 1, 2]
    assert [p["val_loss"] for p in received] == pytest.approx(history.history["val_loss"])

    train = EventAccumulator(
        str(logdir / "train"), size_guidance={"histograms": 0, "tensors": 0}
    ).Reload()
    validation = EventAccumulator(str(logdir / "validation")).Reload()
    losses = [e.value for e in train.Scalars("epoch_loss")]
    assert losses == pytest.approx(history.history["loss"], rel=1e-5)
    assert [e.step for e in validation.Scalars("epoch_loss")] == [0, 1, 2]
    histograms = train.Tags()["histograms"]
    # The chief's real weights: two Dense layers, kernel and bias each, every epoch.
    assert len(histograms) == 4, histograms
    assert all(len(train.Histograms(tag)) == 3 for tag in histograms)
    # write_graph: the model's conceptual graph from the chief's model.to_json().
    (graph,) = train.Tensors("keras")
    assert b"Sequential" in graph.tensor_proto.string_val[0]


def test_tensorboard_gets_images_projector_profile_from_the_chief(tmp_path, read_reports):
    """What needs the model is computed by the chief and written by the coordinator."""
    import keras
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.helpers.worker_fns import digest, tiny_embedding_keras3

    logdir = tmp_path / "tb"
    epochs = 3
    history = distcb.run(
        tiny_embedding_keras3,
        num_workers=2,
        kwargs={"epochs": epochs},
        run_dir=str(tmp_path),
        callbacks=[
            TensorBoard(
                log_dir=str(logdir),
                histogram_freq=1,
                write_images=True,
                write_graph=False,
                embeddings_freq=2,
                embeddings_metadata={"tokens": "words.tsv"},
                profile_batch=2,
            )
        ],
    )
    chief = read_reports(str(tmp_path), 2)[0]
    train = EventAccumulator(str(logdir / "train"), size_guidance={"tensors": 0}).Reload()
    validation = EventAccumulator(str(logdir / "validation")).Reload()

    # Weight images: the chief's weights drawn as Keras draws them, every epoch.
    images = [t for t in train.Tags()["tensors"] if t.endswith("/image")]
    # Keras 3 names weights by path; the bias of one unit squeezes to a scalar: not drawn.
    assert sorted(images) == ["sequential/out/kernel/image", "sequential/tokens/embeddings/image"]
    for tag in images:
        assert train.SummaryMetadata(tag).plugin_data.plugin_name == "images"
        assert [e.step for e in train.Tensors(tag)] == list(range(epochs))
    (kernel, *_) = train.Tensors("sequential/out/kernel/image")
    width, height, png = kernel.tensor_proto.string_val
    assert (width, height) == (b"1", b"12")  # the 12 x 1 kernel squeezes to a vector: 1 x 12
    assert png.startswith(b"\x89PNG")

    # Projector: the config from the chief's layers, its weights saved at epochs 0 and 2.
    assert (logdir / "projector_config.pbtxt").read_text() == (
        "embeddings {\n"
        '  tensor_name: "layer_with_weights-0/embeddings/.ATTRIBUTES/VARIABLE_VALUE"\n'
        '  metadata_path: "words.tsv"\n'
        "}\n"
    )
    saved = sorted(p.name for p in (logdir / "train").glob("keras_embedding.ckpt-*"))
    assert saved == ["keras_embedding.ckpt-0.weights.h5", "keras_embedding.ckpt-2.weights.h5"]
    model = keras.Sequential(
        [
            keras.Input((4,), dtype="int32"),
            keras.layers.Embedding(10, 3),
            keras.layers.Flatten(),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    for epoch in (0, 2):
        model.load_weights(str(logdir / "train" / f"keras_embedding.ckpt-{epoch}.weights.h5"))
        assert digest(model.get_weights()) == chief["digests"][epoch]

    # Profile of global batch 2: the traced graph and one profiler trace, in the train run.
    (graph,) = train.Tensors("batch_2")
    assert graph.step == 2
    assert train.SummaryMetadata("batch_2").plugin_data.plugin_name == "graph_run_metadata_graph"
    assert len(list((logdir / "train" / "plugins" / "profile").glob("*/*.xplane.pb"))) == 1

    # evaluation_<metric>_vs_iterations: the validation loss at the chief's optimizer.iterations.
    evaluation = validation.Scalars("evaluation_loss_vs_iterations")
    assert [e.step for e in evaluation] == [4, 8, 12]  # 32 samples / 8 per batch, each epoch
    assert [e.value for e in evaluation] == pytest.approx(history.history["val_loss"], rel=1e-6)
