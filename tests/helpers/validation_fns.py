"""What the PersistentValidation tests run in real tf_keras workers (module level: picklable)."""

from __future__ import annotations

import json
import os

import numpy as np

EPOCHS = 3


def _data(kind: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    if kind == "binary":
        return x, (x[:, 0] + x[:, 1] > 0).astype("float32"), None
    if kind == "sparse":
        return x, np.digitize(x[:, 0] + 0.5 * x[:, 2], [-0.5, 0.5]).astype("int32"), None
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=n)).astype("float32")
    return x, y, rng.uniform(0.1, 2.0, size=n).astype("float32")


# name -> (data kind, validation samples, PersistentValidation batch_size, steps_per_execution)
CONFIGS = {
    "binary_ce_accuracy": ("binary", 70, 70, 1),
    "sparse_ce_several_metrics": ("sparse", 71, 16, 1),
    "mse_sample_weights": ("regression", 50, None, 3),
}


def _model(keras, name: str):
    kind, _, _, steps_per_execution = CONFIGS[name]
    hidden = keras.layers.Dense(
        8, activation="relu", input_dim=4, kernel_regularizer=keras.regularizers.L2(0.01)
    )
    if kind == "binary":
        model = keras.Sequential([hidden, keras.layers.Dense(1, activation="sigmoid")])
        model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    elif kind == "sparse":
        model = keras.Sequential([hidden, keras.layers.Dense(3, activation="softmax")])
        model.compile(
            keras.optimizers.SGD(0.1),
            keras.losses.SparseCategoricalCrossentropy(),
            metrics=[
                "sparse_categorical_accuracy",
                keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2"),
                keras.metrics.SparseCategoricalCrossentropy(name="xent"),
            ],
        )
    else:
        model = keras.Sequential([hidden, keras.layers.Dense(1)])
        model.compile(
            "adam",
            "mse",
            metrics=["mae", keras.metrics.RootMeanSquaredError(name="rmse")],
            weighted_metrics=["mae"],
            steps_per_execution=steps_per_execution,
        )
    return model


def compare_with_keras(out_dir: str) -> None:
    """For each configuration: fit with PersistentValidation, then with fit's own validation.

    At every epoch end (same weights) it also runs Keras's `evaluate` on the validation
    data. Writes, per rank, what each of the three logged.
    """
    import tensorflow as tf
    import tf_keras as keras

    import distcb
    import distcb.keras

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    rank = distcb.worker_context().rank
    report: dict = {"shards": shards(strategy)}

    class KerasEvaluate(keras.callbacks.Callback):
        """Keras's own evaluate on the weights of this epoch's end."""

        def __init__(self, data, batch_size):
            super().__init__()
            self.data, self.batch_size, self.logs = data, batch_size, []

        def on_epoch_end(self, epoch, logs=None):
            x, y, w = self.data
            self.logs.append(
                self.model.evaluate(
                    x, y, sample_weight=w, batch_size=self.batch_size, verbose=0, return_dict=True
                )
            )

    names = list(CONFIGS)
    for index, name in enumerate(names):
        kind, n_val, batch_size, _ = CONFIGS[name]
        x, y, w = _data(kind, 96, seed=1)
        val = _data(kind, n_val, seed=2)
        validation_data = val if val[2] is not None else val[:2]
        histories = {}
        for how in ("persistent", "keras"):
            keras.utils.set_random_seed(3)
            with strategy.scope():
                model = _model(keras, name)
            probe = KerasEvaluate(val, batch_size)
            callbacks: list = [probe]
            kwargs = {}
            if how == "persistent":
                persistent = distcb.keras.PersistentValidation(
                    validation_data, batch_size=batch_size
                )
                callbacks.insert(0, persistent)
            else:
                kwargs = {"validation_data": validation_data, "validation_batch_size": batch_size}
            last = index == len(names) - 1 and how == "keras"
            if last:  # the job's one coordinated fit (the coordinator waits for it to join)
                callbacks.append(distcb.keras.WorkerCallback(flavour="tf_keras"))
            history = model.fit(
                x,
                y,
                sample_weight=w,
                batch_size=32,
                epochs=EPOCHS,
                verbose=0,
                callbacks=callbacks,
                shuffle=False,
                **kwargs,
            )
            histories[how] = {"history": history.history, "evaluate": probe.logs}
            if how == "persistent":
                histories[how]["steps"] = persistent.steps
        report[name] = histories
    with open(os.path.join(out_dir, f"validation-{rank}.json"), "w") as handle:
        json.dump(report, handle)


def shards(strategy) -> dict:
    """What this worker's replicas receive from PersistentValidation in one epoch.

    71 samples whose features are their indices, batches of 8 per replica: 9 batches,
    so the second replica's last step is an empty batch. The same from a dataset of
    batches of 8.
    """
    import tensorflow as tf

    from distcb.keras import PersistentValidation

    index = np.arange(71, dtype="float32")
    replicas = strategy.num_replicas_in_sync
    arrays = PersistentValidation((index[:, None], index), batch_size=8 * replicas)
    batches = tf.data.Dataset.from_tensor_slices((index[:, None], index)).batch(8)
    report = {}
    for name, validation in (("arrays", arrays), ("dataset", PersistentValidation(batches))):
        iterator = iter(validation.distribute(strategy))
        steps = []
        for _ in range(validation.steps):
            x, _ = next(iterator)
            local = strategy.experimental_local_results(x)
            steps.append([np.asarray(v)[:, 0].astype(int).tolist() for v in local])
        report[name] = {"steps": validation.steps, "per_step": steps}
    return report


def local_replicas(out_path: str) -> None:
    """One process, MirroredStrategy over 2 logical CPUs: one input pipeline feeds 2 replicas."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    import tf_keras as keras

    from distcb.keras import PersistentValidation

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    report: dict = {"replicas": strategy.num_replicas_in_sync, "shards": shards(strategy)}
    keras.utils.set_random_seed(3)
    with strategy.scope():
        model = _model(keras, "sparse_ce_several_metrics")
    x, y, _ = _data("sparse", 71, seed=2)
    for name, data in (
        ("arrays", (x, y)),
        ("dataset", tf.data.Dataset.from_tensor_slices((x, y)).batch(5)),
    ):
        validation = PersistentValidation(data, batch_size=16 if name == "arrays" else None)
        validation.set_model(model)
        validation.on_train_begin()
        report[name] = validation.evaluate()
    report["evaluate"] = model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    with open(out_path, "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    import sys

    local_replicas(sys.argv[1])
