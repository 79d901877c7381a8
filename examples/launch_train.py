"""An ordinary training script for `distcb launch`: synchronous tf_keras workers.

    distcb launch --nproc-per-node 2 --tf-config examples/launch_train.py --epochs 30

    # two nodes (two machines; here both on this one, as tests/launch/test_launch.py runs it)
    export DISTCB_TOKEN=$(openssl rand -hex 32)
    distcb launch --nnodes 2 --node-rank 0 --nproc-per-node 2 --coordinator 127.0.0.1:29400 \\
        --tf-config examples/launch_train.py &
    distcb launch --nnodes 2 --node-rank 1 --nproc-per-node 2 --coordinator 127.0.0.1:29400 \\
        --tf-config examples/launch_train.py

    python examples/launch_train.py      # one process, no distcb job: the reference

The workers train ONE model together (MultiWorkerMirroredStrategy; `--tf-config`
gives each its ``TF_CONFIG``): one global batch of all 32 training samples per
step, each worker reading its own shard (`distribute_datasets_from_function` +
``input_context.shard``), so the workers together see each sample once per step
and the job computes what the single process computes. The coordinator (in the
launcher of node 0) runs `distcb_callbacks()` once for the job: a learning-rate
schedule and EarlyStopping on the aggregated loss, whose decisions every worker
applies at the same epoch. Each worker prints one ``launch_train result {...}``
line (its rank, its shard, its losses).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # moons_data

SEED = 1
SAMPLES = 32  # the global batch: divisible by 1, 2, 4 and 8 workers
RESULT_PREFIX = "launch_train result "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--min-delta", type=float, default=0.001)
    return parser.parse_args(argv)


def schedule(epoch: int, lr: float) -> float:
    return 0.05 if epoch < 1 else 0.02


def distcb_callbacks() -> list[Any]:
    """The coordinator's callbacks; `distcb launch` finds this function by its name and
    calls it in the launcher of node 0 (``sys.argv`` is this script's command line)."""
    from distcb.callbacks import EarlyStopping, LearningRateScheduler

    options = parse_args()
    return [
        LearningRateScheduler(schedule),
        EarlyStopping(monitor="loss", patience=options.patience, min_delta=options.min_delta),
    ]


def build_model(keras: Any) -> Any:
    model = keras.Sequential(
        [
            keras.layers.Dense(16, activation="relu", input_shape=(2,)),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        loss="binary_crossentropy", optimizer=keras.optimizers.SGD(0.05), metrics=["accuracy"]
    )
    return model


def main() -> int:
    options = parse_args()
    import distcb

    context = distcb.worker_context()
    import tensorflow as tf
    import tf_keras as keras
    from moons_data import split

    train_x, train_y, _, _ = split(SAMPLES)
    if context.address is None:  # no distcb job: the single-process reference
        keras.utils.set_random_seed(SEED)
        model = build_model(keras)
        history = model.fit(
            train_x,
            train_y,
            batch_size=SAMPLES,
            epochs=options.epochs,
            shuffle=False,
            verbose=0,
            callbacks=distcb_callbacks(),  # distcb's callbacks run in a plain fit too
        )
        print(RESULT_PREFIX + json.dumps({"loss": history.history["loss"]}), flush=True)
        return 0

    from distcb.keras import WorkerCallback

    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # reads TF_CONFIG (--tf-config)
    keras.utils.set_random_seed(SEED)
    shards: list[list[int]] = []

    def dataset_fn(input_context: Any) -> Any:
        ids = tf.data.Dataset.range(SAMPLES).shard(
            input_context.num_input_pipelines, input_context.input_pipeline_id
        )
        shards.append([int(i) for i in ids.as_numpy_iterator()])
        pairs = ids.map(lambda i: (tf.gather(train_x, i), tf.gather(train_y, i)))
        return pairs.batch(input_context.get_per_replica_batch_size(SAMPLES)).cache().repeat()

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    with strategy.scope():
        model = build_model(keras)
    history = model.fit(
        dataset,
        steps_per_epoch=1,
        epochs=options.epochs,
        verbose=0,
        callbacks=[WorkerCallback(flavour="tf_keras", samples=SAMPLES // context.world_size)],
    )
    result = {
        "rank": context.rank,
        "world_size": context.world_size,
        "local_rank": int(os.environ.get("DISTCB_LOCAL_RANK", "0")),
        "cluster": json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}),
        "shard": shards[0] if shards else None,
        "loss": history.history["loss"],
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
