"""One worker of bench/bench_jax.py: `examples/moons_jax.py`'s training, timed per epoch.

    python bench/jax_worker.py single|plain EPOCHS RUN_DIR    # started by bench_jax.py

Modes: ``single``, one plain Keras 3 JAX process (no distribution); ``plain``, one of the
processes of a JAX job (``KERAS_DISTRIBUTION_*`` set by bench_jax.py), Keras's own
EarlyStopping and ModelCheckpoint on every process; ``distcb`` (`train`, run by
``distcb.run(..., keras_distribution=True)``), `WorkerCallback` and the coordinator's
callbacks. Prints ``BENCH ms_per_epoch=...``: the median time from one epoch's begin to
the next's (callbacks of the epoch end included), the first 10 epochs skipped (compiles).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

SKIPPED_EPOCHS = 10


def train(mode: str, epochs: int, run_dir: str) -> None:
    import distcb
    import distcb.keras

    if mode != "single":
        distcb.keras.jax_data_parallel()
    import keras
    from moons_data import split

    context = distcb.worker_context()
    rank, world_size = context.rank, context.world_size
    keras.utils.set_random_seed(1)
    x, y, vx, vy = split()
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(500, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    begins: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            begins.append(time.perf_counter())

        def on_train_end(self, logs: Any = None) -> None:
            begins.append(time.perf_counter())

    callbacks: list[Any] = [Timer()]
    if mode == "distcb":
        callbacks.append(distcb.keras.WorkerCallback(samples=len(x), val_samples=len(vx)))
    else:  # Keras's own, on every process (each its own file: they would share one path)
        callbacks += [
            keras.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=10**6),
            keras.callbacks.ModelCheckpoint(
                os.path.join(run_dir, f"best_model-{rank}.keras"),
                monitor="val_accuracy",
                mode="max",
                save_best_only=True,
            ),
        ]
    model.fit(
        x[rank::world_size],
        y[rank::world_size],
        batch_size=len(x) // world_size,
        validation_data=(vx[rank::world_size], vy[rank::world_size]),
        validation_batch_size=len(vx) // world_size,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    epoch_s = [b - a for a, b in zip(begins, begins[1:], strict=False)][SKIPPED_EPOCHS:]
    print(f"BENCH rank={rank} ms_per_epoch={statistics.median(epoch_s) * 1e3:.2f}", flush=True)


if __name__ == "__main__":
    train(sys.argv[1], int(sys.argv[2]), sys.argv[3])
