"""Training functions run by real worker processes in the tests (module level: picklable)."""

from __future__ import annotations

import hashlib
import json
import os
import signal

import numpy as np


def digest(weights) -> str:
    h = hashlib.sha256()
    for w in weights:
        h.update(np.asarray(w).tobytes())
    return h.hexdigest()


def data(rank: int, n: int = 64):
    rng = np.random.default_rng(rank)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x.sum(axis=1) > 0).astype("float32")
    return x, y


def tiny_keras3(
    epochs: int,
    batch_size: int = 16,
    kill_at_epoch: int | None = None,
    raise_at_epoch: int | None = None,
    flavour: str = "keras3",
):
    import importlib

    keras = importlib.import_module("tf_keras" if flavour == "tf_keras" else "keras")

    import distcb
    import distcb.keras

    ctx = distcb.worker_context()
    keras.utils.set_random_seed(7)
    x, y = data(ctx.rank)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05), loss="binary_crossentropy", metrics=["accuracy"]
    )
    digests: list[str] = []
    steps: list[list[int]] = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            steps.append([])
            if kill_at_epoch is not None and epoch == kill_at_epoch and ctx.rank == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            if raise_at_epoch is not None and epoch == raise_at_epoch and ctx.rank == 1:
                raise RuntimeError(f"boom at epoch {epoch}")

        def on_train_batch_end(self, batch, logs=None):
            steps[-1].append(batch)

        def on_epoch_end(self, epoch, logs=None):
            digests.append(digest(self.model.get_weights()))

    worker = distcb.keras.WorkerCallback(samples=len(x), val_samples=len(x), batch_size=batch_size)
    model.fit(
        x,
        y,
        validation_data=(x, y),
        epochs=epochs,
        batch_size=batch_size,
        verbose=0,
        callbacks=[Probe(), worker],
    )
    with open(os.path.join(ctx.run_dir, f"rank-{ctx.rank}.json"), "w") as handle:
        json.dump({"digests": digests, "final": worker.report(), "steps": steps}, handle)


def report_environment():
    """No training: writes what the launcher gave this worker, then joins and ends."""
    import keras

    import distcb
    import distcb.keras

    ctx = distcb.worker_context()
    with open(os.path.join(ctx.run_dir, f"env-{ctx.rank}.json"), "w") as handle:
        json.dump(
            {
                "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "TF_CONFIG": os.environ.get("TF_CONFIG"),
                "threads": os.environ.get("TF_NUM_INTRAOP_THREADS"),
                "rank": ctx.rank,
                "world_size": ctx.world_size,
            },
            handle,
        )
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = data(ctx.rank, 8)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[distcb.keras.WorkerCallback()])


def tiny_embedding_keras3(epochs: int, batch_size: int = 8):
    """A Keras 3 model with an Embedding layer; each rank writes its weights' digest per epoch."""
    import keras

    import distcb
    import distcb.keras

    ctx = distcb.worker_context()
    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(ctx.rank)
    x = rng.integers(0, 10, size=(32, 4))
    y = (x.sum(axis=1) > 18).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((4,), dtype="int32"),
            keras.layers.Embedding(10, 3, name="tokens"),
            keras.layers.Flatten(),
            keras.layers.Dense(1, activation="sigmoid", name="out"),
        ]
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    digests: list[str] = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            digests.append(digest(self.model.get_weights()))

    worker = distcb.keras.WorkerCallback(samples=len(x), val_samples=len(x), batch_size=batch_size)
    model.fit(
        x,
        y,
        validation_data=(x, y),
        epochs=epochs,
        batch_size=batch_size,
        verbose=0,
        callbacks=[Probe(), worker],
    )
    with open(os.path.join(ctx.run_dir, f"rank-{ctx.rank}.json"), "w") as handle:
        json.dump({"digests": digests, "final": worker.report()}, handle)
