"""The seed's moons example, synchronous, in Keras 3: 2 workers, MultiWorkerMirroredStrategy.

Keras 3.15's `fit` fails under MultiWorkerMirroredStrategy (docs/keras3-sync.md
has the reason and a reproduction); its layers, losses, metrics and optimizers
work under the strategy. So this example writes the loop `fit` would run: one
step per epoch over the seed's 30 training samples, worker 0 taking the even
samples and worker 1 the odd ones (15 + 15); each replica's loss is its share
of the batch mean, the Keras optimizer sums the gradients over the workers, so
the update is the single-process one. Validation sums losses and hits over
35 + 35 samples on the updated weights. The logs are what Keras 3's
`fit(..., validation_data=...)` logs (tests/launch/test_equivalence.py checks
them against the seed run in one Keras 3 process), and distcb's coordinator
runs the seed's EarlyStopping and ModelCheckpoint on them.

    python examples/moons_sync_keras3.py [--epochs 4000] [--patience 200] [--run-dir ...]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import distcb
from distcb.callbacks import EarlyStopping, ModelCheckpoint


def train(epochs: int) -> None:
    import keras
    import numpy as np
    import tensorflow as tf
    from moons_data import split

    import distcb.keras

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(1)
    train_x, train_y, test_x, test_y = split()
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((2,)),
                keras.layers.Dense(500, activation="relu"),
                keras.layers.Dense(1, activation="sigmoid"),
            ]
        )
        optimizer = keras.optimizers.Adam()
        # Compiled only so that the checkpoint loads ready to evaluate, as the seed's does.
        model.compile(loss="binary_crossentropy", optimizer=optimizer, metrics=["accuracy"])
    per_sample_loss = keras.losses.BinaryCrossentropy(reduction=None)

    def sharded(x, y):  # type: ignore[no-untyped-def]
        # Worker i takes samples i, i + 2, ...: its half of the seed's one batch.
        def worker_data(context: tf.distribute.InputContext) -> tf.data.Dataset:
            data = tf.data.Dataset.from_tensor_slices((x, y))
            data = data.shard(context.num_input_pipelines, context.input_pipeline_id)
            return data.batch(context.get_per_replica_batch_size(len(x))).repeat()

        return iter(strategy.distribute_datasets_from_function(worker_data))

    train_batches, val_batches = sharded(train_x, train_y), sharded(test_x, test_y)

    def sums(x, y, training=False):  # type: ignore[no-untyped-def]
        """This replica's summed loss and hits (Keras's accuracy for a sigmoid output)."""
        y = tf.reshape(y, (-1, 1))
        predictions = model(x, training=training)
        hits = keras.metrics.binary_accuracy(y, predictions)
        return tf.reduce_sum(per_sample_loss(y, predictions)), tf.reduce_sum(hits)

    @tf.function
    def train_step(iterator):  # type: ignore[no-untyped-def]
        def replica_step(x, y):  # type: ignore[no-untyped-def]
            with tf.GradientTape() as tape:
                loss, hits = sums(x, y, training=True)
                share = loss / len(train_x)  # its part of the whole batch's mean loss
            gradients = tape.gradient(share, model.trainable_variables)
            optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
            return loss, hits

        loss, hits = strategy.run(replica_step, args=next(iterator))
        return [strategy.reduce("SUM", value, axis=None) for value in (loss, hits)]

    @tf.function
    def validate(iterator):  # type: ignore[no-untyped-def]
        loss, hits = strategy.run(sums, args=next(iterator))
        return [strategy.reduce("SUM", value, axis=None) for value in (loss, hits)]

    def means(sums, count: int) -> list[float]:  # type: ignore[no-untyped-def]
        # float32 total / count, as Keras's metrics compute their result (here, on the host:
        # in a tf.function, TensorFlow turns a division by a constant into a multiplication).
        return [float(np.float32(total) / np.float32(count)) for total in sums]

    # What fit does around its steps, for the one callback a worker needs.
    model.stop_training = False
    callbacks = keras.callbacks.CallbackList(
        [
            distcb.keras.WorkerCallback(
                flavour="keras3", samples=len(train_x), val_samples=len(test_x)
            )
        ],
        model=model,
        epochs=epochs,
        steps=1,
        verbose=0,
    )
    callbacks.on_train_begin()
    logs: dict[str, float] = {}
    for epoch in range(epochs):
        callbacks.on_epoch_begin(epoch)
        callbacks.on_train_batch_begin(0)
        loss, accuracy = means(train_step(train_batches), len(train_x))
        logs = {"loss": loss, "accuracy": accuracy}
        callbacks.on_train_batch_end(0, logs)
        val_loss, val_accuracy = means(validate(val_batches), len(test_x))
        logs = {**logs, "val_loss": val_loss, "val_accuracy": val_accuracy}
        callbacks.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callbacks.on_train_end(logs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4000)
    parser.add_argument("--patience", type=int, default=200)
    parser.add_argument("--run-dir", default=os.path.join("runs", "moons_sync_keras3"))
    options = parser.parse_args()
    os.makedirs(options.run_dir, exist_ok=True)
    best_path = os.path.join(options.run_dir, "best_model.keras")
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

    import keras
    from moons_data import split

    train_x, train_y, test_x, test_y = split()
    saved_model = keras.models.load_model(best_path)
    _, train_acc = saved_model.evaluate(train_x, train_y, verbose=0)
    _, test_acc = saved_model.evaluate(test_x, test_y, verbose=0)
    print(f"Train: {train_acc:.3f}, Test: {test_acc:.3f}")


if __name__ == "__main__":
    main()
