"""One of the two synchronous moons workers of bench/bench_sync.py (tf_keras + MWMS).

    python bench/sync_worker.py RANK PORTS_JSON EPOCHS

Builds `examples/moons.py`'s training (the seed's model, each worker half of every
30-sample batch, a persistent training iterator, `PersistentValidation`) once per
fit, and runs the fits its driver asks for on stdin, one JSON line each:

* ``{"kind": "plain"}``: tf_keras's own EarlyStopping and ModelCheckpoint
  (save_best_only) on every worker, no distcb;
* ``{"kind": "distcb", "address": ..., "token": ...}``: `distcb.keras.WorkerCallback`,
  the coordinator (the driver) running the same two callbacks once.

Answers one JSON line: the median epoch time in ms (the first `SKIP` epochs skipped).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = 10


def main() -> None:
    rank, ports, epochs = int(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from distcb.worker.cluster import tf_config_json

    os.environ["TF_CONFIG"] = tf_config_json(rank, [f"127.0.0.1:{port}" for port in ports])
    import tensorflow as tf
    import tf_keras as keras
    from moons_data import split

    import distcb.keras

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    train_x, train_y, test_x, test_y = split()

    def worker_data(context: tf.distribute.InputContext) -> tf.data.Dataset:
        data = tf.data.Dataset.from_tensor_slices((train_x, train_y))
        data = data.shard(context.num_input_pipelines, context.input_pipeline_id)
        return data.batch(context.get_per_replica_batch_size(len(train_x))).repeat()

    class Clock(keras.callbacks.Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.ends: list[float] = []

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.ends.append(time.perf_counter())

    folder = tempfile.mkdtemp(prefix=f"distcb-sync-{rank}-")
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["kind"] == "quit":
            break
        keras.utils.set_random_seed(1)
        with strategy.scope():
            model = keras.Sequential(
                [
                    keras.layers.Dense(500, input_dim=2, activation="relu"),
                    keras.layers.Dense(1, activation="sigmoid"),
                ]
            )
            model.compile(loss="binary_crossentropy", optimizer="adam", metrics=["accuracy"])
        clock = Clock()
        validation = distcb.keras.PersistentValidation((test_x, test_y), batch_size=len(test_x))
        if command["kind"] == "plain":
            others: list[Any] = [
                keras.callbacks.EarlyStopping(monitor="val_loss", patience=epochs + 1),
                keras.callbacks.ModelCheckpoint(
                    os.path.join(folder, "best_model.h5"),
                    monitor="val_accuracy",
                    mode="max",
                    save_best_only=True,
                ),
            ]
        else:
            others = [
                distcb.keras.WorkerCallback(
                    command["address"],
                    command["token"],
                    rank=rank,
                    world_size=2,
                    flavour="tf_keras",
                    samples=len(train_x),
                    val_samples=len(test_x),
                )
            ]
        model.fit(
            strategy.distribute_datasets_from_function(worker_data),
            steps_per_epoch=1,
            epochs=epochs,
            verbose=0,
            callbacks=[validation, *others, clock],
        )
        gaps = [b - a for a, b in zip(clock.ends[SKIP:], clock.ends[SKIP + 1 :], strict=False)]
        print(json.dumps({"ms_per_epoch": statistics.median(gaps) * 1e3}), flush=True)


if __name__ == "__main__":
    main()
