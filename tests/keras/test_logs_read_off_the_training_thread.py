"""tf_keras hands batch logs as tensors; the worker reads them on its IO thread, never on
the training thread (on a GPU, reading a tensor there is a device sync every step).

A real tf_keras fit streams every batch to a real coordinator over a real websocket.
A callback placed before the `WorkerCallback` wraps each tensor in the logs in a
proxy that records the thread that reads it (`numpy()`, `float()`), then hands
the same logs on: the test checks that tf_keras passed tensors (it did not read
them itself), that every read happened on the worker's IO thread, and that the
coordinator's batch hook saw the tensors' values.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.slow


class ThreadRecordingTensor:
    """A tensor seen through a proxy: who read it, and what it holds."""

    def __init__(self, tensor: Any, reads: list[str]):
        self.tensor = tensor
        self.reads = reads

    def numpy(self) -> Any:
        self.reads.append(threading.current_thread().name)
        return self.tensor.numpy()

    def __float__(self) -> float:
        self.reads.append(threading.current_thread().name)
        return float(self.tensor.numpy())


class Coordinator:
    """A real Coordinator behind a real WebSocketServer, on an event loop of its own."""

    def __init__(self, callbacks: list[Any]):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.callbacks = callbacks

    def __enter__(self) -> Coordinator:
        from distcb.coordinator.engine import Coordinator as Engine
        from distcb.server import WebSocketServer

        async def start() -> None:
            self.engine = Engine(self.callbacks, world_size=1)
            self.server = WebSocketServer(self.engine)
            await self.server.__aenter__()
            self.run = asyncio.ensure_future(self.engine.run())

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        async def stop() -> None:
            if kind is None:  # the worker ended its fit: the job ends
                await asyncio.wait_for(self.run, 30)
            else:
                self.run.cancel()
            await self.server.__aexit__(None, None, None)

        try:
            asyncio.run_coroutine_threadsafe(stop(), self.loop).result(60)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


def test_tf_keras_batch_logs_are_read_on_the_io_thread_only():
    import tensorflow as tf
    import tf_keras as keras

    import distcb.keras
    from distcb.callbacks import Callback

    seen: list[dict[str, Any]] = []

    class BatchLogs(Callback):  # batch hooks on the coordinator: every batch streams
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            seen.append(dict(logs or {}))

    reads: list[str] = []
    handed: list[dict[str, Any]] = []

    class Wrap(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self._supports_tf_logs = True  # tf_keras hands this callback its tensors, as to ours

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            handed.append({k: v for k, v in logs.items()})
            for key, value in list(logs.items()):
                if isinstance(value, tf.Tensor):
                    logs[key] = ThreadRecordingTensor(value, reads)

    x = np.random.default_rng(0).random((64 * 6, 4), dtype="float32")
    y = (x.sum(1) > 2).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Dense(1, activation="sigmoid", input_shape=(4,))])
    model.compile("sgd", "binary_crossentropy", metrics=["accuracy"])
    with Coordinator([BatchLogs()]) as coordinator:
        worker = distcb.keras.WorkerCallback(
            coordinator.server.address,
            coordinator.server.token,
            rank=0,
            world_size=1,
            flavour="tf_keras",
        )
        model.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[Wrap(), worker])
    steps = 2 * 6
    assert len(handed) == steps
    # tf_keras did not read the logs for us: what reached the callbacks were tensors.
    assert all(isinstance(v, tf.Tensor) for logs in handed for v in logs.values())
    # Each was read once, and never on the training thread.
    assert len(reads) == steps * len(handed[0])
    training = threading.current_thread().name
    assert training not in reads
    assert set(reads) == {"distcb-worker-0-io"}
    # The coordinator's batch hook saw the tensors' values.
    assert len(seen) == steps
    for got, logs in zip(seen, handed, strict=True):
        assert got == {k: float(v.numpy()) for k, v in logs.items()}
