"""Reproduction: Keras 3.15 `fit` fails under MultiWorkerMirroredStrategy (TensorFlow backend).

    python docs/keras3_fit_mwms.py            # starts its 2 local workers itself

Each worker builds and compiles a Keras 3 model inside the strategy's scope
(building the model and the optimizer first changes nothing) and calls `fit`.
Both fail before the first step, in Keras's `_maybe_symbolic_build`, with
``ValueError: Attempt to convert a value (PerReplica:{...}) ... to a Tensor``.
Then each worker shows the cause in two lines of TensorFlow: the strategy's
`reduce` takes one per-replica value, not the (x, y) structure Keras hands it;
MirroredStrategy (one worker) accepts the structure, which is why `fit` works there.
See docs/keras3-sync.md.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def worker(rank: int, ports: list[int]) -> None:
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    task = {"type": "worker", "index": rank}
    os.environ["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": task})
    import keras
    import numpy as np
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x = np.random.default_rng(0).normal(size=(32, 2)).astype("float32")
    y = (x.sum(axis=1) > 0).astype("float32")
    with strategy.scope():
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
        model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
        model.build((None, 2))
        model.optimizer.build(model.trainable_variables)
    try:
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        print(f"worker {rank}: fit ran", flush=True)
    except ValueError as error:
        print(f"worker {rank}: fit failed: {str(error).splitlines()[0]} ...", flush=True)

    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    features, labels = next(iter(strategy.experimental_distribute_dataset(batches)))
    mean = strategy.reduce("MEAN", features, axis=None)
    print(f"worker {rank}: reduce(x) gives shape {mean.shape}", flush=True)
    try:
        strategy.reduce("MEAN", (features, labels), axis=None)  # what _maybe_symbolic_build does
        print(f"worker {rank}: reduce((x, y)) works", flush=True)
    except ValueError as error:
        print(f"worker {rank}: reduce((x, y)) fails: {str(error).splitlines()[0]} ...", flush=True)


def main() -> None:
    sockets = [socket.socket() for _ in range(2)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    workers = [
        subprocess.Popen([sys.executable, __file__, str(rank), json.dumps(ports)])
        for rank in range(2)
    ]
    try:
        for process in workers:
            process.wait(timeout=300)
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()


if __name__ == "__main__":
    if len(sys.argv) == 3:
        worker(int(sys.argv[1]), json.loads(sys.argv[2]))
    else:
        main()
