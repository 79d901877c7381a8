"""The seed's moons example, synchronous, in Keras 3 `fit`: 2 processes on the JAX backend.

Keras 3's `fit` fails under TensorFlow's MultiWorkerMirroredStrategy
(docs/keras3-sync.md); the route Keras recommends across processes is its JAX
backend with `keras.distribution`. `distcb.run(..., keras_distribution=True)`
starts each worker with KERAS_BACKEND=jax and its JAX coordinates;
`distcb.keras.jax_data_parallel()` joins the processes (`jax.distributed`, gloo
collectives on CPU) and sets `DataParallel` over all of their devices. Each
step, worker 0 feeds the even samples of the seed's 30-sample batch and worker 1
the odd ones (15 + 15); Keras assembles the global batch, so loss, gradients
and metrics are one step over the whole batch, the single process's step.
Validation splits the 70 test samples the same way (35 + 35).

The coordinator runs the seed's EarlyStopping(patience=200) and
ModelCheckpoint(save_best_only=True) once, on those logs, so both processes stop
at the same epoch and the chief alone writes best_model.keras; the best model is
then loaded and evaluated, as in the seed. `--show-shards` prints the sample
indices each worker feeds.

    python examples/moons_jax.py [--epochs 4000] [--patience 200] [--workers 2] [--run-dir ...]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import distcb
from distcb.callbacks import EarlyStopping, ModelCheckpoint


def shard_indices(count: int, rank: int, world_size: int) -> list[int]:
    """The samples worker `rank` feeds: every `world_size`-th, from `rank` on. Each global
    batch then holds exactly the samples of the single process's batch."""
    if count % world_size:
        raise ValueError(f"{count} samples do not split evenly over {world_size} workers")
    return list(range(rank, count, world_size))


def train(epochs: int, show_shards: bool = False) -> None:
    import distcb.keras

    distcb.keras.jax_data_parallel()  # before any model exists
    import keras
    from moons_data import make_moons, split

    context = distcb.worker_context()
    rank, world_size = context.rank, context.world_size
    keras.utils.set_random_seed(1)
    train_x, train_y, test_x, test_y = split()
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(500, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    mine = shard_indices(len(train_x), rank, world_size)
    mine_val = shard_indices(len(test_x), rank, world_size)
    x, y, val_x, val_y = train_x[mine], train_y[mine], test_x[mine_val], test_y[mine_val]
    if show_shards:
        # Read back from the arrays this worker hands fit: their rows in the seed's 100 points
        # (train = indices 0-29, test = 30-99).
        import numpy as np

        points, _ = make_moons(100, 0.2, 1)

        def rows(a: np.ndarray) -> list[int]:
            return [int(np.flatnonzero((points == r).all(axis=1))[0]) for r in a]

        print(f"worker {rank} trains on samples {rows(x)}", flush=True)
        print(f"worker {rank} validates on samples {rows(val_x)}", flush=True)
    model.fit(
        x,
        y,
        batch_size=len(x),  # this worker's share of the seed's one batch of 30
        validation_data=(val_x, val_y),
        validation_batch_size=len(val_x),
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[
            distcb.keras.WorkerCallback(samples=len(train_x), val_samples=len(test_x)),
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4000)
    parser.add_argument("--patience", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--run-dir", default=os.path.join("runs", "moons_jax"))
    parser.add_argument("--show-shards", action="store_true", help="print each worker's samples")
    options = parser.parse_args()
    os.makedirs(options.run_dir, exist_ok=True)
    best_path = os.path.join(options.run_dir, "best_model.keras")
    started = time.perf_counter()
    history = distcb.run(
        train,
        num_workers=options.workers,
        keras_distribution=True,
        kwargs={"epochs": options.epochs, "show_shards": options.show_shards},
        run_dir=options.run_dir,
        callbacks=[
            EarlyStopping(monitor="val_loss", mode="min", verbose=1, patience=options.patience),
            ModelCheckpoint(
                best_path, monitor="val_accuracy", mode="max", verbose=1, save_best_only=True
            ),
        ],
    )
    wall_s = time.perf_counter() - started
    epochs_run = len(history.epoch)
    ends = {rank: report["epochs_run"] for rank, report in history.worker_reports.items()}
    print(f"epochs={epochs_run} wall_s={wall_s:.1f} ms_per_epoch={wall_s / epochs_run * 1e3:.1f}")
    print(f"epochs run by each worker: {ends}")

    # The saved model, evaluated in this process as the seed does (Keras's JAX backend too).
    os.environ["KERAS_BACKEND"] = "jax"
    import keras
    from moons_data import split

    train_x, train_y, test_x, test_y = split()
    saved_model = keras.models.load_model(best_path)
    _, train_acc = saved_model.evaluate(train_x, train_y, verbose=0)
    _, test_acc = saved_model.evaluate(test_x, test_y, verbose=0)
    print(f"Train: {train_acc:.3f}, Test: {test_acc:.3f}")


if __name__ == "__main__":
    main()
