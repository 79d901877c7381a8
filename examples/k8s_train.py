"""One worker of a distcb job on Kubernetes: tf_keras + MultiWorkerMirroredStrategy.

The manifests in k8s/ run this file in every worker pod (Indexed Job or
JobSet), and `coordinator_callbacks` in the coordinator pod
(``distcb coordinator --callbacks k8s_train:coordinator_callbacks``). The pod
knows its rank (``JOB_COMPLETION_INDEX``, JobSet's labels), the world size
and its peers' stable DNS names; `distcb.worker_context(tf_config="auto")`
turns that into ``TF_CONFIG``. It must run BEFORE the strategy is created:
``MultiWorkerMirroredStrategy()`` reads ``TF_CONFIG`` once, in its constructor.

The workers train one model together: each reads its own shard of the data
(`distribute_datasets_from_function` + ``input_context.shard``; with
auto-sharding off every worker would take the same first slice of every
global batch), gradients are all-reduced every step, so the result is the
single-process full-batch result. The coordinator runs EarlyStopping once
for the job; every worker stops at the same epoch and exits 0.

Preemption and exact resume: with ``DISTCB_RUN_DIR`` set (the rendered
manifests mount a shared claim there) the chief backs up model and optimizer
at every epoch barrier. A SIGTERM'd pod asks the coordinator for a common
stop; every worker exits 143, Kubernetes replaces the pods, and the new ones
rejoin, load the chief's backup and go on from the next epoch, ending as the
uninterrupted job would. For that, each epoch must depend only on the weights,
the optimizer and (seed, epoch): the data here is read in a fixed order (no
shuffling; permute per epoch from (seed, epoch) if you need to), and
``WorkerCallback(seed=...)`` reseeds the global generators at every epoch.

    python examples/k8s_train.py [--epochs 60] [--lr 0.05]

Exit codes (`distcb.worker_main`): 0 finished (also an early stop), 143
"retry me" (preempted, or the job restarts from its backups after a lost
worker), 1 failed (the coordinator is told, and fails the job), 2 bad
arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import distcb

SEED = 1
RESULT_PREFIX = "k8s_train result "


def coordinator_callbacks() -> list[Any]:
    """The coordinator's callbacks (``--callbacks k8s_train:coordinator_callbacks``)."""
    from distcb.callbacks import EarlyStopping

    return [EarlyStopping(**EARLY_STOPPING)]


EARLY_STOPPING = {"monitor": "loss", "min_delta": 0.005, "patience": 2}


def build_model(keras: Any, lr: float) -> Any:
    """A small classifier for the two moons (the same model in every worker and the reference)."""
    model = keras.Sequential(
        [
            keras.layers.Dense(16, activation="relu", input_shape=(2,)),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(
        loss="binary_crossentropy", optimizer=keras.optimizers.Adam(lr), metrics=["accuracy"]
    )
    return model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=_positive, default=60)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument(
        "--crash-at-epoch",
        type=int,
        default=None,
        help="fault injection (the failure-policy tests): raise at the start of this epoch",
    )
    parser.add_argument("--crash-rank", type=int, default=1, help="the rank --crash-at-epoch hits")
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, received {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    context = distcb.worker_context(tf_config="auto")  # BEFORE the strategy is created

    import tensorflow as tf
    import tf_keras as keras
    from moons_data import split

    from distcb.keras import WorkerCallback

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(SEED)
    train_x, train_y, _, _ = split()
    shards: list[list[int]] = []

    def dataset_fn(input_context: Any) -> Any:
        # This worker's shard: samples input_pipeline_id, +num_input_pipelines, ...
        ids = tf.data.Dataset.range(len(train_x)).shard(
            input_context.num_input_pipelines, input_context.input_pipeline_id
        )
        shards.append([int(i) for i in ids.as_numpy_iterator()])
        batch = input_context.get_per_replica_batch_size(len(train_x))
        pairs = ids.map(lambda i: (tf.gather(train_x, i), tf.gather(train_y, i)))
        return pairs.batch(batch).cache().repeat()

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    with strategy.scope():
        model = build_model(keras, options.lr)
    progress = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: print(
            f"rank {context.rank}: epoch {epoch} done, loss {logs['loss']:.4f}", flush=True
        )
    )
    worker = WorkerCallback(
        flavour="tf_keras", samples=len(train_x) // context.world_size, seed=SEED
    )
    callbacks: list[Any] = [worker, progress]
    if options.crash_at_epoch is not None and context.rank == options.crash_rank:
        callbacks.insert(0, _crash_callback(keras, options.crash_at_epoch))
    history = model.fit(
        dataset, steps_per_epoch=1, epochs=options.epochs, verbose=0, callbacks=callbacks
    )
    digest = hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()
    result = {
        "rank": context.rank,
        "world_size": context.world_size,
        "cluster": json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}),
        "shard": shards[0] if shards else None,
        "epochs": len(history.history["loss"]),
        "loss": [float(v) for v in history.history["loss"]],
        "weights_sha256": digest,
        "resumed_after": worker.resumed_after,  # None: this process started the job
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def _crash_callback(keras: Any, epoch: int) -> Any:
    def on_epoch_begin(current: int, logs: Any = None) -> None:
        if current == epoch:
            raise RuntimeError(f"injected failure at the start of epoch {epoch}")

    return keras.callbacks.LambdaCallback(on_epoch_begin=on_epoch_begin)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # moons_data
    # The exit code the pod failure policy reads: 0, 143 "retry me" (preempted, the job
    # restarts, a lost peer), 1 (this worker's own code raised: the coordinator is told).
    sys.exit(distcb.worker_main(main))
