"""The seed's moons example, synchronous: 2 workers, tf_keras + MultiWorkerMirroredStrategy.

The two workers train ONE model together and compute what the seed computes in
one process. Each step, worker 0 takes the even samples of the 30 training
samples and worker 1 the odd ones (15 + 15); Keras averages the two halves'
gradients, which is the full batch's gradient. Validation splits the 70 test
samples the same way (35 + 35) and reduces the sums over both workers, so
`val_loss` and `val_accuracy` are the whole test set's. Run with
`--show-shards` to print the sample indices each worker receives.

The coordinator runs the seed's EarlyStopping(patience=200) and
ModelCheckpoint(save_best_only=True) once, on those aggregated logs, so both
workers stop at the same epoch and the chief alone writes best_model.h5; then
the best model is loaded with Keras and evaluated, as in the seed.

Speed: `fit(validation_data=...)` under this strategy builds a new distributed
iterator for the validation every epoch (300-650 ms per epoch here).
`distcb.keras.PersistentValidation` runs the model's own compiled evaluation
over one iterator for the whole run instead; the training data repeats and
`steps_per_epoch` is set, so `fit` keeps one training iterator too (see
docs/BENCHMARKS.md).

    python examples/moons.py [--epochs 4000] [--patience 200] [--run-dir runs/moons] [--show-shards]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import distcb
from distcb.callbacks import EarlyStopping, ModelCheckpoint


def train(epochs: int, show_shards: bool = False) -> None:
    import tensorflow as tf
    import tf_keras as keras
    from moons_data import split

    import distcb.keras

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(1)
    train_x, train_y, test_x, test_y = split()
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.layers.Dense(500, input_dim=2, activation="relu"),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])

    def worker_data(context: tf.distribute.InputContext) -> tf.data.Dataset:
        # Worker i takes samples i, i + 2, i + 4, ...: 15 + 15 make the seed's batch of 30.
        data = tf.data.Dataset.from_tensor_slices((train_x, train_y))
        data = data.shard(context.num_input_pipelines, context.input_pipeline_id)
        return data.batch(context.get_per_replica_batch_size(len(train_x))).repeat()

    train_data = strategy.distribute_datasets_from_function(worker_data)
    validation = distcb.keras.PersistentValidation((test_x, test_y), batch_size=len(test_x))
    if show_shards:
        print_shards(strategy, train_data, validation)
    model.fit(
        train_data,
        steps_per_epoch=1,
        epochs=epochs,
        verbose=0,
        callbacks=[
            validation,  # first: the callbacks after it see val_loss and val_accuracy
            distcb.keras.WorkerCallback(
                flavour="tf_keras", samples=len(train_x), val_samples=len(test_x)
            ),
        ],
    )


def print_shards(strategy, train_data, validation) -> None:  # type: ignore[no-untyped-def]
    """Print the sample indices this worker's replicas receive in one epoch."""
    import numpy as np
    from moons_data import make_moons

    import distcb

    points, _ = make_moons(100, 0.2, 1)  # train = indices 0-29, test = 30-99

    def indices(batch) -> list[int]:  # type: ignore[no-untyped-def]
        rows = np.concatenate([np.asarray(x) for x in strategy.experimental_local_results(batch)])
        return sorted(int(np.flatnonzero((points == row).all(axis=1))[0]) for row in rows)

    val_data = validation.distribute(strategy)
    train_x = next(iter(train_data))[0]
    val_iterator = iter(val_data)
    val_x = [i for _ in range(validation.steps) for i in indices(next(val_iterator)[0])]
    rank = distcb.worker_context().rank
    print(f"worker {rank} trains on samples {indices(train_x)}", flush=True)
    print(f"worker {rank} validates on samples {sorted(val_x)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4000)
    parser.add_argument("--patience", type=int, default=200)
    parser.add_argument("--run-dir", default=os.path.join("runs", "moons"))
    parser.add_argument("--show-shards", action="store_true", help="print each worker's samples")
    options = parser.parse_args()
    os.makedirs(options.run_dir, exist_ok=True)
    best_path = os.path.join(options.run_dir, "best_model.h5")
    started = time.perf_counter()
    history = distcb.run(
        train,
        num_workers=2,
        tf_config=True,
        threads_per_worker=1,
        kwargs={"epochs": options.epochs, "show_shards": options.show_shards},
        run_dir=options.run_dir,
        callbacks=[
            EarlyStopping(monitor="val_loss", mode="min", verbose=1, patience=options.patience),
            # verbose=0: the progress line shows the best val_accuracy; a message per epoch
            # ("did not improve") would bury it.
            ModelCheckpoint(
                best_path, monitor="val_accuracy", mode="max", verbose=0, save_best_only=True
            ),
        ],
    )
    wall_s = time.perf_counter() - started
    epochs_run = len(history.epoch)
    ends = {rank: report["epochs_run"] for rank, report in history.worker_reports.items()}
    print(f"epochs={epochs_run} wall_s={wall_s:.1f} ms_per_epoch={wall_s / epochs_run * 1e3:.1f}")
    print(f"epochs run by each worker: {ends}")

    import tf_keras as keras
    from moons_data import split

    train_x, train_y, test_x, test_y = split()
    saved_model = keras.models.load_model(best_path)
    _, train_acc = saved_model.evaluate(train_x, train_y, verbose=0)
    _, test_acc = saved_model.evaluate(test_x, test_y, verbose=0)
    print(f"Train: {train_acc:.3f}, Test: {test_acc:.3f}")


if __name__ == "__main__":
    main()
