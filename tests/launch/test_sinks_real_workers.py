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
