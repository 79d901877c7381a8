"""The seed's moons example, synchronous: 2 workers, tf_keras + MultiWorkerMirroredStrategy.

The two workers train ONE model together (gradients all-reduced every step);
the coordinator runs the seed's EarlyStopping(patience=200) and
ModelCheckpoint(save_best_only=True) once, so both workers stop at the same
epoch and exit together, and the chief alone writes best_model.h5. Then the
best model is loaded with Keras and evaluated, as in the seed.

Where the time of a MultiWorkerMirroredStrategy epoch went, for this tiny
model on 2 CPU processes (measured here: ~300-650 ms per epoch with plain
`fit(x, y, validation_data=...)`): not the thread pools (one intra/inter-op
thread changed nothing) but distributed iterators. `fit` creates a new one
over the training data every epoch, and `evaluate` (the validation) another
one every epoch; each costs collective setup across the workers. Here the
training dataset repeats and `steps_per_epoch` is set, so `fit` keeps one
iterator for the whole run, and the validation runs as a compiled
distributed step over one persistent iterator (`PersistentValidation`),
computing exactly the `val_loss`/`val_accuracy` Keras computes. About 65 ms
per epoch instead (see docs/BENCHMARKS.md).

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
    # Every worker sees the whole (tiny) data set, as the single-process seed does.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    train_ds = tf.data.Dataset.from_tensor_slices((train_x, train_y)).batch(len(train_x))
    test_ds = tf.data.Dataset.from_tensor_slices((test_x, test_y)).batch(len(test_x))
    train_ds = train_ds.cache().repeat().with_options(options)
    test_ds = test_ds.cache().repeat().with_options(options)
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.layers.Dense(500, input_dim=2, activation="relu"),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
    validation = PersistentValidation(strategy, model, test_ds)
    model.fit(
        train_ds,
        steps_per_epoch=1,
        epochs=epochs,
        verbose=0,
        callbacks=[
            validation,  # before WorkerCallback: the epoch logs it sends carry val_*
            distcb.keras.WorkerCallback(
                flavour="tf_keras", samples=len(train_x), val_samples=len(test_x)
            ),
        ],
    )


def _validation_callback_base() -> type:
    import tf_keras as keras

    return keras.callbacks.Callback  # type: ignore[no-any-return]


class PersistentValidation:
    """Adds `val_loss` and `val_accuracy` to the epoch logs from one distributed iterator.

    Keras's own validation builds a new distributed iterator every epoch; this one
    keeps one for the run. Each worker evaluates the whole validation set; sums of
    per-sample losses and hits are reduced over the workers, so the ratio is the
    same mean Keras reports.
    """

    def __new__(cls, *args: object) -> PersistentValidation:
        klass = type("PersistentValidation", (cls, _validation_callback_base()), {})
        return super().__new__(klass)

    def __init__(self, strategy, model, dataset) -> None:  # type: ignore[no-untyped-def]
        import tensorflow as tf
        import tf_keras as keras

        super().__init__()
        self._iterator = iter(strategy.experimental_distribute_dataset(dataset))

        def replica_step(x, y):  # type: ignore[no-untyped-def]
            y = tf.reshape(y, (-1, 1))
            predictions = model(x, training=False)
            loss = keras.losses.binary_crossentropy(y, predictions)
            hits = keras.metrics.binary_accuracy(y, predictions)
            count = tf.cast(tf.size(y), tf.float32)
            return tf.reduce_sum(loss), tf.reduce_sum(hits), count

        @tf.function
        def step(iterator):  # type: ignore[no-untyped-def]
            per_replica = strategy.run(replica_step, args=next(iterator))
            return [strategy.reduce("SUM", value, axis=None) for value in per_replica]

        self._step = step

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:  # type: ignore[type-arg]
        loss, hits, count = self._step(self._iterator)
        if logs is not None:
            logs["val_loss"] = float(loss / count)
            logs["val_accuracy"] = float(hits / count)


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
