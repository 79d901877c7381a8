"""A worker script run as a pod runs it: DISTCB_* from the environment, `distcb.worker_main`
turning what happened into the exit code (tests/launch/test_worker_main.py).

    python -m tests.helpers.main_worker SCENARIO

Scenarios (each at the start of epoch 1, after epoch 0's barrier was committed):
    finish       train 3 epochs and return
    raise        a callback raises RuntimeError (a bug)
    unavailable  a callback raises TensorFlow's UnavailableError (what a collective raises
                 once a MultiWorkerMirroredStrategy peer is gone)
    after-restart  SIGTERM to itself (WorkerCallback's handler: the coordinator restarts the
                 job), then a callback ahead of WorkerCallback raises in on_train_end, after
                 the stop the coordinator decided
"""

import os
import signal
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import distcb  # noqa: E402
from distcb.keras import WorkerCallback  # noqa: E402


class Fault(keras.callbacks.Callback):
    def __init__(self, scenario: str):
        super().__init__()
        self.scenario = scenario

    def on_epoch_begin(self, epoch, logs=None):
        if epoch != 1:
            return
        print(f"main_worker: {self.scenario} at epoch 1", flush=True)
        if self.scenario == "raise":
            raise RuntimeError("a bug in the training code")
        if self.scenario == "unavailable":
            raise tf.errors.UnavailableError(None, None, "Collective ops is aborted by: a peer")
        if self.scenario == "after-restart":
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_end(self, logs=None):
        if self.scenario == "after-restart":
            raise RuntimeError("the collectives failed after the stop")


def main() -> int:
    scenario = sys.argv[1]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 3)).astype("float32")
    y = (x.sum(axis=1) > 0).astype("float32")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    callbacks = [Fault(scenario), WorkerCallback(samples=len(x))]
    model.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0, callbacks=callbacks)
    print("main_worker: fit returned", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(distcb.worker_main(main))
