"""The seed's moons example, synchronous: 2 workers, tf_keras + MultiWorkerMirroredStrategy.

The two workers train ONE model together (gradients all-reduced every step);
the coordinator runs the seed's EarlyStopping(patience=200) and
ModelCheckpoint(save_best_only=True) once, so both workers stop at the same
epoch and exit together, and the chief alone writes best_model.h5. Then the
best model is loaded with Keras and evaluated, as in the seed.

    python examples/moons.py [--epochs 4000] [--run-dir runs/moons]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import distcb
from distcb.callbacks import EarlyStopping, ModelCheckpoint


def train(epochs: int) -> None:
    import tensorflow as tf
    import tf_keras as keras
    from moons_data import split

    import distcb.keras

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(1)
    train_x, train_y, test_x, test_y = split()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    # Build the datasets once: fit() then reuses them every epoch.
    train_ds = tf.data.Dataset.from_tensor_slices((train_x, train_y)).batch(30).cache()
    test_ds = tf.data.Dataset.from_tensor_slices((test_x, test_y)).batch(70).cache()
    train_ds, test_ds = train_ds.with_options(options), test_ds.with_options(options)
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.layers.Dense(500, input_dim=2, activation="relu"),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    model.fit(
        train_ds,
        validation_data=test_ds,
        epochs=epochs,
        verbose=0,
        callbacks=[distcb.keras.WorkerCallback(flavour="tf_keras", samples=30, val_samples=70)],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4000)
    parser.add_argument("--patience", type=int, default=200)
    parser.add_argument("--run-dir", default=os.path.join("runs", "moons"))
    options = parser.parse_args()
    os.makedirs(options.run_dir, exist_ok=True)
    best_path = os.path.join(options.run_dir, "best_model.h5")
    started = time.perf_counter()
    history = distcb.run(
        train,
        num_workers=2,
        tf_config=True,
        threads_per_worker=1,
        kwargs={"epochs": options.epochs},
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

    import tf_keras as keras
    from moons_data import split

    train_x, train_y, test_x, test_y = split()
    saved_model = keras.models.load_model(best_path)
    _, train_acc = saved_model.evaluate(train_x, train_y, verbose=0)
    _, test_acc = saved_model.evaluate(test_x, test_y, verbose=0)
    print(f"Train: {train_acc:.3f}, Test: {test_acc:.3f}")


if __name__ == "__main__":
    main()
